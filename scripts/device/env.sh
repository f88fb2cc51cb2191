# Sourced by the device scripts: the environment for lizard's binaries on the lent GPU machine.
#   . scripts/device/env.sh BIN_DIR     (BIN_DIR/lib: the bundle's shared libraries, scripts/device/build_bundle.sh)
# NVLink multicast must stay off on the shared GPU machines; NCCL comes from CUDA or pip's wheel.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 OMP_WAIT_POLICY=passive
nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(os.path.dirname(nvidia.nccl.__file__), "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=$1/lib:/usr/local/cuda/lib64:${nccl_dir}:${LD_LIBRARY_PATH:-}
