"""Fits a results folder to what the device tool brings back from `$OUT`.

The GPU machines lent to this project return at most 8 files from `$OUT`, each at most 16 MiB, no
more than 2 folders down, each name made of letters, digits, '.', '_' and '-' alone; anything
else stays behind with the machine (/work/.library/device/README.md, "Limits"). A full suite run
writes 9 files (the TMA model run adds tma/), so without this the last of them would be lost.

Files that come back as they are, in this order of priority: the summary, the stage table, the
log, the benchmark JSON, the model-vs-measured pair, the chart, then the rest by path. When the
folder holds more than the limit, or a file that would not come back (too big, too deep, an odd
name, not a plain file), the first `max_files - 1` returnable files stay and everything else goes
into one archive, `more.tar.gz` (unpack it where the results are committed:
`tar -xzf more.tar.gz`). A folder within the limits is left untouched.

    python benchmarks/fit_return.py DIR [--max-files 8] [--max-bytes 16777216] [--max-depth 2]
"""
import argparse
import os
import re
import sys
import tarfile

PRIORITY = ("summary.md", "stages.tsv", "log.txt", "results.json", "model_vs_measured.json",
            "model_vs_measured.md", "per_layer.png")
ARCHIVE = "more.tar.gz"
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _files(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def returnable(root, rel, max_bytes, max_depth):
    """Whether the file `rel` under `root` would come back as it is, and if not, why."""
    parts = rel.split(os.sep)
    path = os.path.join(root, rel)
    if len(parts) - 1 > max_depth:
        return f"{len(parts) - 1} folders down (at most {max_depth})"
    if not all(_NAME.match(p) for p in parts):
        return "a name with characters other than letters, digits, '.', '_' and '-'"
    if os.path.islink(path) or not os.path.isfile(path):
        return "not a plain file"
    if os.path.getsize(path) > max_bytes:
        return f"{os.path.getsize(path)} bytes (at most {max_bytes})"
    return None


def _rank(rel):
    return (PRIORITY.index(rel) if rel in PRIORITY else len(PRIORITY), rel)


def fit(root, max_files=8, max_bytes=16 << 20, max_depth=2, log=print):
    """Packs what would not come back into `root`/more.tar.gz; returns the files left in `root`."""
    if max_files < 2:
        raise ValueError(f"max_files must be at least 2 (one file and the archive), got {max_files}")
    root = os.path.abspath(root)
    files = _files(root)
    why = {rel: returnable(root, rel, max_bytes, max_depth) for rel in files}
    if len(files) <= max_files and not any(why.values()):
        log(f"fit_return: {len(files)} files in {root}, within the limits: nothing packed")
        return files
    if ARCHIVE in files:
        raise FileExistsError(f"{os.path.join(root, ARCHIVE)} exists: move it away and run again")
    ok = sorted((rel for rel in files if why[rel] is None), key=_rank)
    keep, pack = ok[:max_files - 1], sorted(set(files) - set(ok[:max_files - 1]))
    archive = os.path.join(root, ARCHIVE)
    with tarfile.open(archive, "w:gz") as tar:
        for rel in pack:
            tar.add(os.path.join(root, rel), arcname=rel, recursive=False)
    for rel in pack:
        path = os.path.join(root, rel)
        os.remove(path)
        d = os.path.dirname(path)
        while d != root and os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
            d = os.path.dirname(d)
    for rel in pack:
        log(f"fit_return: {rel} -> {ARCHIVE}" + (f" ({why[rel]})" if why[rel] else ""))
    size = os.path.getsize(archive)
    if size > max_bytes:
        log(f"fit_return: WARNING {ARCHIVE} is {size} bytes, over the {max_bytes} that come back")
    log(f"fit_return: {len(keep)} files kept as they are, {len(pack)} packed into {ARCHIVE} "
        f"(tar -xzf {ARCHIVE} to unpack)")
    return keep + [ARCHIVE]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--max-files", type=int, default=8)
    ap.add_argument("--max-bytes", type=int, default=16 << 20)
    ap.add_argument("--max-depth", type=int, default=2)
    args = ap.parse_args(argv)
    if not os.path.isdir(args.folder):
        ap.error(f"folder {args.folder!r} does not exist or is not a folder")
    try:
        fit(args.folder, args.max_files, args.max_bytes, args.max_depth)
    except (ValueError, FileExistsError) as e:
        print(f"fit_return: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
