// The ground's pod sandbox process (tools/pause/main.go): our own, static, so no registry image is needed.
module github.com/datamover/datamover/tools/pause

go 1.24.0
