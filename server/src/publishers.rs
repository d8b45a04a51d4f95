//! Publishers: the scientists who own apps and batches, and their tokens.
//!
//! Tokens are made on the server's machine (`wasmgrid-server token create --scope publish`),
//! never over the API: whoever can publish can make volunteers run code, so the right to
//! publish is given by the operator. A publisher sees and changes only its own apps and
//! batches; every query in [`crate::publishing`] is scoped by the publisher's id.

use sqlx::PgConnection;

use crate::secrets::{new_secret, secret_hash};

/// What a publisher token says about the caller.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Publisher {
    pub id: i64,
    pub name: String,
}

/// A new token, the only time it exists in clear.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub publisher: Publisher,
    pub token: String,
    /// False when the token was added to a publisher that existed already.
    pub publisher_created: bool,
}

/// Prefix of publisher tokens.
const TOKEN_PREFIX: &str = "wgp";

/// Creates a token for the publisher called `name`, creating the publisher first if there is
/// none (so `token create --name alice` twice gives alice two tokens, for two machines).
/// Without a name, a new publisher is created with a generated one.
pub async fn create_token(connection: &mut PgConnection, name: Option<&str>) -> anyhow::Result<NewToken> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    let (publisher, publisher_created) = match name {
        Some(name) => {
            let name = crate::text::label("name", name, 100).map_err(|error| anyhow::anyhow!("{error}"))?;
            let created: Option<Publisher> = sqlx::query_as(
                "insert into publisher (name) values ($1) on conflict (name) do nothing returning id, name",
            )
            .bind(&name)
            .fetch_optional(&mut *transaction)
            .await?;
            match created {
                Some(publisher) => (publisher, true),
                None => {
                    let existing = sqlx::query_as("select id, name from publisher where name = $1")
                        .bind(&name)
                        .fetch_one(&mut *transaction)
                        .await?;
                    (existing, false)
                }
            }
        }
        None => {
            let publisher = sqlx::query_as(
                "insert into publisher (name)
                 values ('publisher-' || (select coalesce(max(id), 0) + 1 from publisher))
                 returning id, name",
            )
            .fetch_one(&mut *transaction)
            .await?;
            (publisher, true)
        }
    };
    let token = new_secret(TOKEN_PREFIX);
    sqlx::query("insert into publisher_token (publisher_id, token_hash) values ($1, $2)")
        .bind(publisher.id)
        .bind(secret_hash(&token))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    tracing::info!(publisher.id = publisher.id, "publisher token created");
    Ok(NewToken { publisher, token, publisher_created })
}

pub async fn publisher_by_token(connection: &mut PgConnection, token: &str) -> sqlx::Result<Option<Publisher>> {
    sqlx::query_as(
        "select p.id, p.name from publisher_token t join publisher p on p.id = t.publisher_id
         where t.token_hash = $1 and t.revoked_at is null",
    )
    .bind(secret_hash(token))
    .fetch_optional(connection)
    .await
}

/// The id of the publisher called `name`, created without a token if new: for tools that
/// publish straight into the database (benchmarks, tests).
pub async fn ensure(connection: &mut PgConnection, name: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "with created as (insert into publisher (name) values ($1) on conflict (name) do nothing returning id)
         select id from created union all select id from publisher where name = $1 limit 1",
    )
    .bind(name)
    .fetch_one(connection)
    .await
}
