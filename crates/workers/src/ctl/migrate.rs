//! `trackctl migrate`: creates the database if it is missing and applies the schema's migrations.

pub(super) async fn run() -> anyhow::Result<()> {
    let db = crate::boot::db_settings(2)?;
    tracking_store::create_database_for(&db).await?;
    let pool = tracking_store::Db::connect_lazy(&db)?;
    tracking_store::migrate(&pool).await?;
    println!("The database is migrated.");
    Ok(())
}
