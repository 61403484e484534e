//! One module per subcommand, each with its own `Args` and a thin `run`.

pub(crate) mod admin;
pub(crate) mod bench;
pub(crate) mod chat;
pub(crate) mod convert;
pub(crate) mod device;
pub(crate) mod doctor;
pub(crate) mod inspect;
pub(crate) mod model_args;
pub(crate) mod perplexity;
pub(crate) mod platform_bench;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod serve_bench;
pub(crate) mod synth;
pub(crate) mod tokenize;
pub(crate) mod train;
