//! A fresh PostgreSQL database per test, for the scale-out tests. They need a server:
//! `TANDEM_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth) is
//! where one is looked for. Without one the tests skip, saying why, unless
//! `TANDEM_REQUIRE_PG=1` (set by `.ci/run`), which makes a missing server a failure.

use sqlx::Connection as _;

pub struct PgDb {
    /// The URL of this test's own database.
    pub url: String,
    admin: String,
    name: String,
}

fn admin_url() -> String {
    std::env::var("TANDEM_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Creates an empty database, or returns None (after printing why) when no server answers.
pub async fn fresh(test: &str) -> Option<PgDb> {
    let admin = admin_url();
    let connect = sqlx::PgConnection::connect(&admin);
    let mut conn = match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => conn,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            if std::env::var("TANDEM_REQUIRE_PG").is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: PostgreSQL is required (TANDEM_REQUIRE_PG=1) but {admin} fails: {why}"
                );
            }
            eprintln!(
                "skipping {test}: no PostgreSQL at {admin} ({why}); set TANDEM_TEST_PG to run it"
            );
            return None;
        }
    };
    let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .expect("createdb");
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_string();
    Some(PgDb { url: format!("{base}/{name}"), admin, name })
}

impl PgDb {
    /// A connection to this test's database (to look at what is committed).
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url).await.expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop cannot await; a thread with its own runtime can.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("drop database if exists {name} with (force)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
