//! Publisher tokens, as the operator sees them: which exist, whose they are, and revoking
//! one. A revoked token stays on record and is refused from then on.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: i64,
    pub publisher: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every publisher token, oldest first; only `publisher`'s when given.
pub async fn list(connection: &mut PgConnection, publisher: Option<&str>) -> sqlx::Result<Vec<TokenRecord>> {
    sqlx::query_as(
        "select t.id, p.name as publisher, t.created_at, t.revoked_at
         from publisher_token t join publisher p on p.id = t.publisher_id
         where $1::text is null or p.name = $1
         order by t.id",
    )
    .bind(publisher)
    .fetch_all(connection)
    .await
}

/// Revokes token `id`; revoking it again changes nothing. `None` if there is no such token.
pub async fn revoke(connection: &mut PgConnection, id: i64) -> sqlx::Result<Option<TokenRecord>> {
    sqlx::query_as(
        "update publisher_token t set revoked_at = coalesce(t.revoked_at, now())
         from publisher p
         where t.id = $1 and p.id = t.publisher_id
         returning t.id, p.name as publisher, t.created_at, t.revoked_at",
    )
    .bind(id)
    .fetch_optional(connection)
    .await
}
