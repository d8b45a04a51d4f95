//! What can go wrong in a work unit's life, as its callers need to tell it apart. The HTTP
//! edge turns it into the API's errors (`http::error`); the sweeps and background tasks
//! just log it.

use wasmgrid_protocol::Sha256Hash;

#[derive(Debug, thiserror::Error)]
pub enum WorkUnitError {
    /// A report or an upload named a replica that does not exist.
    #[error("no replica {0}")]
    UnknownReplica(i64),
    /// A host reported a replica handed to another.
    #[error("replica {0} is not assigned to this host")]
    NotYours(i64),
    /// A success was reported without its output uploaded first.
    #[error("replica {replica_id}: output {output} was not uploaded before the report")]
    NotUploaded { replica_id: i64, output: Sha256Hash },
    /// One request reported a replica twice, differently.
    #[error("replica {0} is reported twice, differently")]
    ReportedTwice(i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Stored data that cannot be (a malformed hash, a validated work unit without its
    /// canonical replica): a bug, or a database changed by hand.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}
