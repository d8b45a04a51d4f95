//! The states of work units and replicas, as the database's enum types hold them.

/// Where a work unit is in its life. It ends exactly once: validated, or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "work_unit_state", rename_all = "snake_case")]
pub enum WorkUnitState {
    /// Replicas are being run or wait to be.
    Active,
    /// A canonical result was found; late results are still checked against it.
    Validated,
    /// It ended without a result: too many errors, no consensus, or cancelled.
    Failed,
}

/// Where one replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "replica_state", rename_all = "snake_case")]
pub enum ReplicaState {
    /// Waiting in the queue for a host.
    Unsent,
    /// Handed to a host, which must report by its deadline.
    InProgress,
    /// Ended, with an [`Outcome`].
    Over,
}

/// How a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "replica_outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// It ran to success and reported an output.
    Success,
    /// It failed on its host (a trap, a broken limit, an exit status).
    ClientError,
    /// Its host missed the deadline, or could not run it: it says nothing about the work.
    NoReply,
    /// Its work unit ended before it ran.
    DidntNeed,
    /// Its output could not be validated.
    ValidateError,
}

/// Where the recheck of a result accepted on trust is: asked for when its host was caught
/// returning a wrong result (see [`super::lookback`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "recheck_state", rename_all = "snake_case")]
pub enum Recheck {
    /// Other hosts run the work unit again.
    Pending,
    /// They agree with the result.
    Confirmed,
    /// They did not: the result was replaced, or the work unit failed.
    Corrected,
}

/// What validation made of a replica's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "validate_state", rename_all = "snake_case")]
pub enum Validation {
    /// Not judged yet.
    Pending,
    /// It agrees with the canonical result.
    Valid,
    /// It does not.
    Invalid,
    /// Compared, and no answer had enough support yet.
    Inconclusive,
    /// Of another version of the instrumentation than the quorum's: never compared.
    Incomparable,
}

impl Validation {
    /// The name of the database's enum value, for statements that take arrays of text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Inconclusive => "inconclusive",
            Self::Incomparable => "incomparable",
        }
    }
}

impl Outcome {
    /// The name of the database's enum value, for statements that take arrays of text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::NoReply => "no_reply",
            Self::DidntNeed => "didnt_need",
            Self::ValidateError => "validate_error",
        }
    }

    /// Failed runs count towards `max_error_replicas`; missed deadlines only towards
    /// `max_total_replicas`, as in BOINC (a host that vanished says nothing about the work).
    pub fn is_error(self) -> bool {
        matches!(self, Self::ClientError | Self::ValidateError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_validation_and_outcome_is_named_as_the_database_names_it() {
        let validations = [
            Validation::Pending,
            Validation::Valid,
            Validation::Invalid,
            Validation::Inconclusive,
            Validation::Incomparable,
        ];
        let names: Vec<&str> = validations.iter().map(|v| v.as_str()).collect();
        assert_eq!(names, ["pending", "valid", "invalid", "inconclusive", "incomparable"]);
        assert!(Outcome::ClientError.is_error() && Outcome::ValidateError.is_error());
        assert!(!Outcome::NoReply.is_error() && !Outcome::Success.is_error() && !Outcome::DidntNeed.is_error());
    }
}
