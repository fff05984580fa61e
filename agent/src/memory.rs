//! Allocator tuning for a long-running agent on a small device.
//!
//! glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after
//! a burst of large documents (e.g. 40 refused 1 MB desired-state values) later blocks of that
//! size come from the heap and are kept after they are freed: measured, RSS stayed 20 MiB
//! over idle after the documents were deleted. A fixed threshold keeps every block of 128 KiB
//! or more in its own mapping, returned to the system when freed (measured: within 2 MiB of
//! idle).

/// Blocks this large or larger are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (which also stops its dynamic
/// raising), unless `MALLOC_MMAP_THRESHOLD_` is set in the environment. Call before threads
/// start. A no-op off glibc.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        set_threshold();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_threshold() {
    // SAFETY: mallopt takes two integers and only changes allocator parameters; it is called
    // before the runtime's threads start.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
    if ok != 1 {
        tracing::warn!(
            "cannot fix the allocator's mmap threshold; memory may stay high after large documents"
        );
    }
}
