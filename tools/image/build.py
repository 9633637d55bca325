"""Builds the datamover image without a container engine, reproducibly, into $DATAMOVER_CACHE/image.

Why not `docker build`: no daemon runs on the machines this project builds on, and the registries other than the
package ones are out of reach. So the image is assembled from what those give us:

- base layer: the files of Debian's `python3.11` and the packages it depends on (not apt, dpkg, perl or a shell),
  taken from a bookworm rootfs that debootstrap makes once and the cache keeps, plus Debian's CA bundle;
- deps layer: the wheels pinned with their hashes in tools/image/requirements.lock, unpacked into
  /usr/local/lib/python3.11/dist-packages (Debian's Python looks there; no virtualenv needed);
- app layer: the `datamover` package from operator/ and the two entrypoints, datamover-operator and datamover-worker.

Every .pyc is compiled by the image's own interpreter (chroot) in unchecked-hash mode, so nothing depends on file
times and nothing is written at run time on a read-only root. Layers are tar files with sorted entries, owner 0:0 and
one fixed mtime, gzipped with no timestamp: the same inputs give the same digests. The result is an OCI archive
(image layout in a tar) that `ctr images import` and `docker load` take, named ghcr.io/datamover/datamover:<version>.

The image has no passwd entry for its user 65532 on purpose: the operator must not need one (docs/install.md).

Usage (root: debootstrap and chroot need it): python tools/image/build.py [--force] | --lock
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parents[1]
LOCK = TOOLS / "requirements.lock"
HOST_PACKAGES = REPO / "tools" / "host-packages.sh"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON = "python3.11"
# Packages whose files (with those of everything they depend on) make the base layer.
ROOT_PACKAGES = (PYTHON,)
# Files of the rootfs outside those packages that the image needs.
EXTRA_FILES = ("etc/ssl/certs/ca-certificates.crt", "etc/ld.so.cache")
# Parts of packages nobody reads in a container.
DROPPED_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/lintian/",
                    "usr/share/locale/", "usr/share/bug/", "usr/share/doc-base/")
SITE = f"usr/local/lib/{PYTHON}/dist-packages"
IMAGE_USER = "65532:65532"
# Every file in every layer gets this mtime (1 Jan 2000): fixed, so the layers' digests depend on content only.
EPOCH = 946684800
WHEEL_TAGS = ("--only-binary=:all:", "--implementation=cp", "--python-version=3.11", "--abi=cp311", "--abi=abi3",
              "--abi=none", *(f"--platform={p}" for p in (
                  "manylinux_2_36_x86_64", "manylinux_2_34_x86_64", "manylinux_2_28_x86_64",
                  "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")))

ENTRYPOINTS = {
    "datamover-operator": "datamover.controller.main",
    "datamover-worker": "datamover.worker.main",
}


def log(message: str) -> None:
    print(f"image: {message}", flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("DATAMOVER_CACHE") or Path.home() / ".cache" / "datamover") / "image"


def version() -> str:
    text = (REPO / "operator" / "datamover" / "__init__.py").read_text()
    found = re.search(r'__version__ = "([^"]+)"', text)
    if not found:
        raise SystemExit("image: no __version__ in operator/datamover/__init__.py")
    return found.group(1)


def image_name() -> str:
    return f"ghcr.io/datamover/datamover:{version()}"


def archive_path() -> Path:
    return cache_dir() / f"datamover-{version()}.oci.tar"


# ------------------------------------------------------------------------------------------------------------
# The Debian base


def base_rootfs() -> Path:
    """A debootstrapped bookworm with python3.11, made once per (suite, mirror, packages) and kept in the cache."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(ROOT_PACKAGES)} ca-certificates".encode()).hexdigest()[:16]
    root = cache_dir() / f"debian-{SUITE}-{key}"
    if (root / ".complete").exists():
        return root
    subprocess.run(["bash", str(HOST_PACKAGES), "debootstrap"], check=True)
    log(f"debootstrap {SUITE} into {root} (once; later builds reuse it)")
    shutil.rmtree(root, ignore_errors=True)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join((*ROOT_PACKAGES, 'ca-certificates'))}",
         SUITE, str(partial / "rootfs"), MIRROR],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"image: debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    partial.rename(root)
    (root / ".complete").write_text(f"{time.monotonic() - started:.0f}s\n")
    return root


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    depends: tuple[tuple[str, ...], ...]  # each entry: alternatives


def read_dpkg_status(rootfs: Path) -> dict[str, DebPackage]:
    packages: dict[str, DebPackage] = {}
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields or "install ok installed" not in fields.get("Status", ""):
            continue
        deps: list[tuple[str, ...]] = []
        for key in ("Pre-Depends", "Depends"):
            for group in filter(None, (g.strip() for g in fields.get(key, "").split(","))):
                deps.append(tuple(re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")))
        packages[fields["Package"]] = DebPackage(fields["Package"], fields["Version"], tuple(deps))
    return packages


def closure(packages: dict[str, DebPackage], roots: Iterable[str]) -> list[DebPackage]:
    """The installed packages `roots` need, following Depends and Pre-Depends (first installed alternative)."""
    seen: dict[str, DebPackage] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in packages:
            raise SystemExit(f"image: {name} is not installed in the base rootfs")
        seen[name] = packages[name]
        for alternatives in packages[name].depends:
            chosen = next((a for a in alternatives if a in packages), None)
            if chosen is not None:
                todo.append(chosen)
    return sorted(seen.values(), key=lambda p: p.name)


def package_files(rootfs: Path, package: str) -> Iterator[str]:
    info = rootfs / "var/lib/dpkg/info"
    for candidate in (info / f"{package}.list", info / f"{package}:amd64.list"):
        if candidate.exists():
            yield from (line.lstrip("/") for line in candidate.read_text().splitlines() if line.strip("/."))
            return
    raise SystemExit(f"image: no file list for {package}")


def canonical(rootfs: Path, relative: str) -> str:
    """The path of `relative` with its parent directories' symlinks resolved (merged /usr: lib -> usr/lib)."""
    parent = os.path.realpath(rootfs / os.path.dirname(relative))
    base = os.path.realpath(rootfs)
    return os.path.relpath(os.path.join(parent, os.path.basename(relative)), base)


def copy_entry(src_root: Path, dst_root: Path, relative: str) -> None:
    src, dst = src_root / relative, dst_root / relative
    if not os.path.lexists(src) or os.path.lexists(dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copystat(src, dst)
    else:
        shutil.copy2(src, dst)


def assemble_base(rootfs: Path, staging: Path) -> list[DebPackage]:
    packages = closure(read_dpkg_status(rootfs), ROOT_PACKAGES)
    for name in ("bin", "lib", "lib64", "sbin"):  # merged /usr: the dynamic loader is found through /lib64
        copy_entry(rootfs, staging, name)
    files: set[str] = set(EXTRA_FILES)
    for package in packages:
        for path in package_files(rootfs, package.name):
            path = canonical(rootfs, path)
            if not path.startswith(DROPPED_PREFIXES) and not (rootfs / path).is_dir():
                files.add(path)
    for path in sorted(files):
        copy_entry(rootfs, staging, path)
    os.symlink(PYTHON, staging / "usr/bin/python3")
    for directory, mode in (("tmp", 0o1777), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
                            ("run", 0o755), ("var/tmp", 0o1777)):
        (staging / directory).mkdir(parents=True, exist_ok=True)
        (staging / directory).chmod(mode)
    # Debian's postinst scripts compiled the standard library in the rootfs; the image compiles its own (below).
    for pycache in staging.rglob("__pycache__"):
        shutil.rmtree(pycache)
    return packages


# ------------------------------------------------------------------------------------------------------------
# Python dependencies and the app


def lock_entries() -> dict[str, str]:
    """name==version -> sha256, from tools/image/requirements.lock."""
    entries: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, _, digest = line.partition(" --hash=sha256:")
            entries[requirement] = digest.strip()
    return entries


def wheels() -> list[Path]:
    """The locked wheels, downloaded once into the cache (pip checks every hash); none is trusted unchecked."""
    wheel_dir = cache_dir() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wanted = lock_entries()
    by_hash = {sha256_file(w): w for w in wheel_dir.glob("*.whl")}
    if not all(digest in by_hash for digest in wanted.values()):
        log(f"downloading {len(wanted)} locked wheels into {wheel_dir}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", "-r", str(LOCK),
             "-d", str(wheel_dir), *WHEEL_TAGS],
            check=True,
        )
        by_hash = {sha256_file(w): w for w in wheel_dir.glob("*.whl")}
    missing = [r for r, digest in wanted.items() if digest not in by_hash]
    if missing:
        raise SystemExit(f"image: no wheel with the locked hash for {', '.join(missing)}")
    return sorted(by_hash[d] for d in wanted.values())


def write_lock() -> None:
    """Resolve pyproject's runtime dependencies for the image's Python and rewrite requirements.lock."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "-d", tmp, *WHEEL_TAGS, *deps], check=True)
        lines = ["# The image's Python dependencies, exact versions and wheel hashes "
                 "(python tools/image/build.py --lock rewrites it)."]
        for wheel in sorted(Path(tmp).glob("*.whl"), key=lambda p: p.name.lower()):
            name, ver = wheel.name.split("-")[:2]
            lines.append(f"{name.replace('_', '-').lower()}=={ver} --hash=sha256:{sha256_file(wheel)}")
    LOCK.write_text("\n".join(lines) + "\n")
    log(f"wrote {LOCK} ({len(lines) - 1} wheels)")


def install_wheels(staging: Path) -> None:
    target = staging / SITE
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
         "--no-warn-script-location", "--target", str(target), *WHEEL_TAGS, *map(str, wheels())],
        check=True,
    )
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts with the build machine's shebang
    for direct_url in target.glob("*.dist-info/direct_url.json"):  # names the cache path the wheel came from
        direct_url.unlink()
        record = direct_url.parent / "RECORD"
        record.write_text("".join(line for line in record.read_text().splitlines(True)
                                  if "direct_url.json" not in line))


def install_app(staging: Path) -> None:
    target = staging / SITE
    shutil.copytree(REPO / "operator" / "datamover", target / "datamover",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info = target / f"datamover-{version()}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: datamover\nVersion: {version()}\n")
    bindir = staging / "usr/local/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name, module in ENTRYPOINTS.items():
        script = bindir / name
        script.write_text(f"#!/usr/bin/{PYTHON}\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)


def compile_all(staging: Path) -> None:
    """Byte-compile with the image's own interpreter, by content hash: valid whatever the files' times are."""
    subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(staging), f"/usr/bin/{PYTHON}", "-m", "compileall",
         "-q", "-q", "--invalidation-mode=unchecked-hash", f"/usr/lib/{PYTHON}", f"/{SITE}"],
        check=True, env={"PATH": "/usr/bin", "LANG": "C.UTF-8"},
    )


# ------------------------------------------------------------------------------------------------------------
# Layers and the OCI archive


def layer_of(relative: str) -> str:
    if relative.startswith((f"{SITE}/datamover", "usr/local/bin")):
        return "app"
    if relative.startswith(SITE):
        return "deps"
    return "base"


def _tarinfo(path: Path, name: str) -> tarfile.TarInfo:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode = st.st_mode & 0o7777
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if path.is_symlink():
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif path.is_dir():
        info.type = tarfile.DIRTYPE
    else:
        info.type, info.size = tarfile.REGTYPE, st.st_size
    return info


def write_layers(staging: Path, out_dir: Path) -> list[tuple[str, str, Path]]:
    """One tar per layer, entries sorted; returns (layer, diff_id, gzipped blob path) in order base, deps, app."""
    entries: dict[str, list[str]] = {"base": [], "deps": [], "app": []}
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            relative = os.path.relpath(os.path.join(dirpath, name), staging)
            entries[layer_of(relative)].append(relative)
    layers = []
    for layer, names in entries.items():
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            parents: set[str] = set()
            for relative in sorted(names):
                # A layer also carries the directories above its files, so it unpacks on its own.
                parts = relative.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    parent = "/".join(parts[:i])
                    if parent not in parents and layer_of(parent) != layer:
                        parents.add(parent)
                        tar.addfile(_tarinfo(staging / parent, parent))
                path = staging / relative
                info = _tarinfo(path, relative)
                if info.type == tarfile.REGTYPE:
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                parents.add(relative)
        data = raw.getvalue()
        diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = out_dir / f"{layer}.tar.gz"
        with blob.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(data)
        layers.append((layer, diff_id, blob))
    return layers


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_oci_archive(layers: list[tuple[str, str, Path]], debs: list[DebPackage], out: Path) -> str:
    """The OCI image layout as one tar (plus docker's manifest.json, so `docker load` takes it too)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layout = Path(tmp)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_descs = []
        for _layer, _diff_id, blob in layers:
            digest = sha256_file(blob)
            shutil.copyfile(blob, blobs / digest)
            layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "digest": f"sha256:{digest}", "size": blob.stat().st_size})
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "User": IMAGE_USER,
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1",
                        "HOME=/tmp", "LANG=C.UTF-8"],
                "Entrypoint": ["datamover-operator"],
                "WorkingDir": "/tmp",
                "Labels": {
                    "org.opencontainers.image.title": "datamover",
                    "org.opencontainers.image.version": version(),
                    "org.opencontainers.image.licenses": "Apache-2.0",
                    "org.opencontainers.image.base.name": f"debian:{SUITE} ({', '.join(ROOT_PACKAGES)})",
                    "io.datamover.debian-packages": " ".join(f"{p.name}={p.version}" for p in debs),
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _l, diff_id, _b in layers]},
            "history": [{"created": created, "created_by": f"tools/image/build.py: {layer} layer"}
                        for layer, _d, _b in layers],
        }
        config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": layer_descs,
        }
        manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"io.containerd.image.name": image_name(),
                                "org.opencontainers.image.ref.name": version()},
            }],
        }
        (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        docker_manifest = [{"Config": f"blobs/sha256/{config_digest.removeprefix('sha256:')}",
                            "RepoTags": [image_name()],
                            "Layers": [f"blobs/sha256/{d['digest'].removeprefix('sha256:')}"  # type: ignore[union-attr]
                                       for d in layer_descs]}]
        (layout / "manifest.json").write_text(json.dumps(docker_manifest, sort_keys=True))
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(layout):
                dirnames.sort()
                for name in sorted(dirnames + filenames):
                    path = Path(dirpath) / name
                    tar.addfile(_tarinfo(path, str(path.relative_to(layout))),
                                path.open("rb") if path.is_file() and not path.is_symlink() else None)
        partial.rename(out)
    return manifest_digest


# ------------------------------------------------------------------------------------------------------------


def inputs_stamp(base: Path) -> str:
    """What the image is made of: the base, the lock, our code and this script; unchanged means no rebuild."""
    digest = hashlib.sha256()
    digest.update(base.name.encode())
    for path in [LOCK, Path(__file__).resolve(), *sorted((REPO / "operator" / "datamover").rglob("*.py")),
                 *sorted((REPO / "operator" / "datamover").rglob("py.typed"))]:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build(force: bool) -> Path:
    if os.geteuid() != 0:
        raise SystemExit("image: building the image needs root (debootstrap and chroot); run `make image` as root")
    cache_dir().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = base_rootfs()
    out = archive_path()
    stamp_file = out.with_suffix(".stamp")
    stamp = inputs_stamp(base)
    if not force and out.exists() and stamp_file.exists() and stamp_file.read_text().split()[0] == stamp:
        log(f"up to date: {out}")
        return out
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="build-") as tmp:
        staging = Path(tmp) / "rootfs"
        staging.mkdir()
        debs = assemble_base(base / "rootfs", staging)
        install_wheels(staging)
        install_app(staging)
        compile_all(staging)
        layers = write_layers(staging, Path(tmp))
        digest = write_oci_archive(layers, debs, out)
    stamp_file.write_text(f"{stamp} {digest}\n")
    sizes = ", ".join(f"{layer} {blob_size(out, layer_i)}" for layer_i, (layer, _d, _b) in enumerate(layers))
    log(f"built {image_name()} {digest} in {time.monotonic() - started:.0f}s: {out} "
        f"({out.stat().st_size / 1e6:.0f} MB; {sizes})")
    return out


def blob_size(archive: Path, index: int) -> str:
    with tarfile.open(archive) as tar:
        index_json = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_digest = index_json["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(tar.extractfile(f"blobs/sha256/{manifest_digest}"))  # type: ignore[arg-type]
    return f"{manifest['layers'][index]['size'] / 1e6:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    parser.add_argument("--lock", action="store_true", help="re-resolve the dependencies into requirements.lock")
    args = parser.parse_args()
    if args.lock:
        write_lock()
    else:
        build(args.force)


if __name__ == "__main__":
    main()
