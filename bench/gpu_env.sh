# Sourced by the GPU scripts (bench/gpu_check.sh, recipes/gpu_check.sh) on the device machine:
# installs the wheels carried in .whl/ (../shared/tools/gpu-wheels.sh) into /tmp/site, puts them
# and this checkout on PYTHONPATH, and installs the start-up hook (onmt-sdrop install-hook) into
# the interpreter's site-packages, as a user would (`onmt-sdrop install-hook`), so the stock
# onmt_* commands load the plugin, in their spawned DataLoader workers too (without it a worker
# dies on the terminology transform's `import spacy`; an H200 run of recipes/gpu_check.sh hung
# that way, 2026-11-27, before `onmt-sdrop` installed the guards in its workers itself).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  .whl/*.whl 2>&1 | grep -v "^WARNING: Target directory"
if [ ! -d /tmp/site/onmt ]; then
  echo "gpu_env.sh: error: no wheels in .whl/ (run ../shared/tools/gpu-wheels.sh here)" >&2
  return 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
python3 -m onmt_sdrop.cli install-hook \
  || echo "gpu_env.sh: warning: no start-up hook; DataLoader workers will fail to import onmt" >&2
