//! Choosing the compute device: CPU everywhere, CUDA where built with `--features cuda` and a GPU
//! is present. Asking for CUDA where it cannot work is a clear error, never a crash. Also the
//! process set-up the CPU path needs to run at speed: the allocator's reuse of freed memory and
//! the rayon pool the commands run on.
use candle_core::Device;

/// Which device the user asked for on the command line.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum DeviceChoice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`, a driver and the CUDA libraries).
    Cuda,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device cuda: this binary was built without CUDA support; rebuild with \
         `cargo build --release --features cuda` (see README, section CUDA)"
    )]
    NotBuiltWithCuda,
    #[error(
        "--device cuda: no usable CUDA GPU ({0}); check `nvidia-smi`, and that libcuda, cuBLAS and \
         cuRAND are on LD_LIBRARY_PATH (see README, section CUDA), or use --device cpu"
    )]
    NoGpu(String),
}

/// Open the chosen device.
pub fn open(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                return Err(DeviceError::NotBuiltWithCuda);
            }
            // cudarc loads the driver at run time and may panic when it is missing: contain that.
            match std::panic::catch_unwind(|| Device::new_cuda(0)) {
                Ok(Ok(device)) => Ok(device),
                Ok(Err(e)) => Err(DeviceError::NoGpu(e.to_string())),
                Err(_) => Err(DeviceError::NoGpu(
                    "the CUDA driver library could not be loaded".into(),
                )),
            }
        }
    }
}

/// The best device built in: CUDA when compiled with it and a GPU answers, else the CPU.
pub fn best() -> Device {
    open(DeviceChoice::Cuda).unwrap_or(Device::Cpu)
}

/// Keep freed memory in the process on glibc, for the CPU tensors' allocation churn. By default
/// glibc returns big blocks (activations of a training step are MBs each) to the kernel on free
/// and takes fresh zeroed pages for the next, so every step page-faulted through its activations
/// again: measured 10 % of a BCAE-2D step in the kernel, and 1.2-1.35x faster training steps
/// with this (`bcae bench --work train`). Peak RSS is unchanged: the memory is reused, not grown.
/// Call once at start-up, before threads allocate.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and the heap
        // is never trimmed back to the kernel.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only sets allocator parameters; it is called before other threads
        // exist, and a rejected value (returned 0) leaves glibc's defaults in place.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            // One arena: the blocks a worker frees are the ones the next op, on any thread,
            // reuses (per-thread arenas each kept their own, up to 1.7x the peak RSS).
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Let candle's own worker threads sleep soon after each job. candle 0.11 runs its binary ops (the
/// gradient sums and the optimizer's updates: hundreds per training step) on a barrier pool of
/// its own, beside rayon's; after every job its workers spin 25,000 times before parking. With
/// rayon's workers running our kernels on the same cores, a spinning candle worker takes a core
/// from them: `perf` showed it spinning for a quarter of a two-thread BCAE-2D training step, and
/// a spin limit of 200 took that step from 13.5-14.3 to 17.5-18.4 crops/s (64x64, 2 threads;
/// limits 50, 200 and 1000 all within noise). Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to 200 unless
/// the user set it. Call at start-up, before any tensor op or thread.
pub fn park_idle_candle_workers() {
    const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN_LIMIT).is_none() {
        std::env::set_var(SPIN_LIMIT, "200");
    }
}

/// Run `work` on a thread of a rayon pool (sized by `RAYON_NUM_THREADS`, else one thread per
/// core) rather than on the calling thread. Every tensor op and kernel call fans out through
/// rayon; called from outside a pool each one hands its job to a worker and sleeps until it is
/// done, two context switches per op, about 11 % of a BCAE-2D training step on one thread. From
/// a worker thread the op runs in place and the other workers steal from it. Workers get a
/// 16 MiB stack, as the autograd graph walk recurses once per op.
pub fn run_on_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    const STACK: usize = 16 << 20;
    match rayon::ThreadPoolBuilder::new().stack_size(STACK).build() {
        Ok(pool) => pool.install(work),
        // No pool (threads refused): the same work from the calling thread.
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_opens() {
        assert!(open(DeviceChoice::Cpu).unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = open(DeviceChoice::Cuda).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
