//! x86-64 kernels. Each `rows` function is `unsafe` with a `#[target_feature]`
//! body: callers guarantee the CPU has the feature (see
//! [`super::Backend::is_available`]) and that the task's slices hold whole
//! rows and whole padded tokens.

pub mod amx;
pub mod avx2;
pub mod avx512;
