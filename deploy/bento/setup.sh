#!/bin/sh
# docker.setup_script of every bentofile. BentoML 1.4.39 runs it as root while it builds the image,
# right after `uv pip install -r service/requirements.txt` into /app/.venv (the uv venv is active)
# and before it copies the bento's files in and switches to the `bentoml` user.
#
# 1. MANYLABEL_CUDA_WHEELS (an `envs` entry of bentofile-gpu.yaml, so an ARG + ENV of the image):
#    extra packages to install; the GPU image adds the CUDA extras of onnxruntime-gpu this way.
#    A bentofile that sets `python.requirements_txt` cannot also list `packages` (BentoML ignores
#    them), and BentoML fails on a nested `-r` (it looks for the file inside the bento), so this is
#    where a variant adds to the shared list.
# 2. A `manylabel` command: `exec python -m service` with the bento's src folder on PYTHONPATH, so
#    `docker run IMAGE manylabel batch ...` and the Kubernetes Job run the bento's own CLI from any
#    working directory. MANYLABEL_BIN_DIR moves it (the tests write it to a temp folder).
set -eu

if [ -n "${MANYLABEL_CUDA_WHEELS:-}" ]; then
    # Split on spaces (a list of requirements), but never glob: `[cuda,cudnn]` is a bracket pattern.
    set -f
    # shellcheck disable=SC2086
    uv pip install $MANYLABEL_CUDA_WHEELS
    set +f
fi

bin_dir="${MANYLABEL_BIN_DIR:-/usr/local/bin}"
src="${BENTO_PATH:-/home/bentoml/bento}/src"
python="$(command -v python)"  # /app/.venv/bin/python in the image
mkdir -p "$bin_dir"
cat > "$bin_dir/manylabel" <<EOF
#!/bin/sh
# The manylabel CLI from the bento's own files (written by deploy/bento/setup.sh).
PYTHONPATH="$src\${PYTHONPATH:+:\$PYTHONPATH}" exec "$python" -m service "\$@"
EOF
chmod 755 "$bin_dir/manylabel"
