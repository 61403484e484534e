//! What can go wrong, as one typed error for every operation.

/// A platform operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The database cannot be reached or answered with an error.
    #[error("database unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// The rate limiter's Redis cannot be reached or answered with an error.
    #[error("rate limiter unavailable: {0}")]
    Redis(String),
    /// No such tenant, key or record.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what is stored (a duplicate name).
    #[error("{0}")]
    Conflict(String),
    /// An argument is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
    /// A usage row could not be committed in time.
    #[error("usage could not be recorded: {0}")]
    Metering(String),
    /// The settings cannot be used.
    #[error("platform configuration: {0}")]
    Config(String),
}

impl PlatformError {
    /// Whether the failure is a backing service being down (answer 503),
    /// rather than the caller's mistake.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PlatformError::Database(_) | PlatformError::Redis(_) | PlatformError::Metering(_)
        )
    }
}

/// Shorthand.
pub type Result<T, E = PlatformError> = std::result::Result<T, E>;
