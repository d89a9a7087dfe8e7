# Shared by the prepare_*.sh scripts: run `ipoke data prepare` through the Python module (works without the
# console script on PATH). WORKERS (default 2) sets the number of parallel processes.
run_prepare() {
    python -m ipoke.data.prepare --workers "${WORKERS:-2}" "$@"
}
