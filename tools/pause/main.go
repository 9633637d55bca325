// Command pause holds a pod's namespaces open for the ground's real node: the sandbox image's only process.
//
// It sleeps until SIGINT or SIGTERM and reaps any child re-parented to it (it is PID 1 of the sandbox), which is
// all a pod sandbox needs. Built static (CGO_ENABLED=0) by tools/build.sh and packed into an image by
// tools/image/build.py --pause, it replaces the registry's pause image, which this machine cannot pull.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
