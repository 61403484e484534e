//! `bitnet admin`: tenants, keys, usage, invoices, the audit log and
//! privacy operations, straight on the platform's database (the same
//! operations, and the same audit events, as the server's `/admin` API).

use anyhow::{Context, bail};
use bitnet_platform::{Platform, PlatformConfig, audit, metering, privacy, tenants};
use bitnet_server::ServerConfig;
use clap::Subcommand;

use std::path::PathBuf;

const ACTOR: &str = "cli";

/// Flags of `bitnet admin`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The platform database: `sqlite://FILE` or `postgres://...`.
    #[arg(long, env = "BITNET_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// A serve.toml whose `[platform]` section defines the tiers.
    #[arg(long, env = "BITNET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Tenants: create, list, show, suspend, resume, set-tier, delete, export.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API keys: create, list, rotate, revoke.
    #[command(subcommand)]
    Key(KeyCommand),
    /// A tenant's usage by day and model (or its rows with --csv).
    Usage {
        /// Tenant id.
        tenant: String,
        /// First day, YYYY-MM-DD (default: 30 days ago).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (default: today).
        #[arg(long)]
        to: Option<String>,
        /// Every row as CSV.
        #[arg(long)]
        csv: bool,
    },
    /// A tenant's invoice for a month.
    Invoice {
        /// Tenant id.
        tenant: String,
        /// YYYY-MM (default: this month).
        #[arg(long)]
        month: Option<String>,
        /// As CSV.
        #[arg(long)]
        csv: bool,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Deletes usage rows older than N days.
    Purge {
        /// Days to keep (default: the configured retention_days).
        #[arg(long)]
        older_than_days: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Creates a tenant.
    Create {
        /// A unique name.
        name: String,
        /// Its tier (default: the first configured one).
        #[arg(long)]
        tier: Option<String>,
    },
    /// Lists tenants.
    List,
    /// Shows one tenant.
    Show { id: String },
    /// Suspends a tenant: its keys stop working at once.
    Suspend { id: String },
    /// Lifts a suspension.
    Resume { id: String },
    /// Moves a tenant to another tier.
    SetTier { id: String, tier: String },
    /// Deletes a tenant with its keys and usage (GDPR erasure).
    Delete {
        id: String,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Writes everything stored about a tenant as JSON.
    Export {
        id: String,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Makes a key; it is printed once and cannot be shown again.
    Create {
        /// Tenant id.
        tenant: String,
        /// A label.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Lists a tenant's keys.
    List { tenant: String },
    /// Replaces a key with a new one and revokes the old.
    Rotate { key_id: String },
    /// Revokes a key.
    Revoke { key_id: String },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Recomputes the hash chain; exits with status 1 if it is broken.
    Verify,
    /// The latest events.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

fn print<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn today() -> String {
    bitnet_platform::db::day_of(bitnet_platform::db::now_ms())
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut config: PlatformConfig = match &args.config {
        Some(p) => ServerConfig::from_toml_file(p)?.platform,
        None => PlatformConfig::default(),
    };
    if args.database_url.is_some() {
        config.database_url = args.database_url.clone();
    }
    if config.database_url.is_none() {
        bail!("no database: pass --database-url URL (or BITNET_DATABASE_URL)");
    }
    // The admin token is not needed here: the CLI talks to the database.
    config.admin_token = None;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (p, writer) = Platform::start(config).await?;
        let outcome = command(&p, args.command).await;
        drop(p);
        let _ = writer.await;
        outcome
    })
}

async fn command(p: &Platform, cmd: AdminCommand) -> anyhow::Result<()> {
    let s = &p.store;
    match cmd {
        AdminCommand::Tenant(t) => match t {
            TenantCommand::Create { name, tier } => {
                let tier = tier.unwrap_or_else(|| p.config.tiers[0].name.clone());
                print(&p.create_tenant(ACTOR, &name, &tier).await?)
            }
            TenantCommand::List => print(&tenants::list_tenants(s).await?),
            TenantCommand::Show { id } => print(&tenants::get_tenant(s, &id).await?),
            TenantCommand::Suspend { id } => {
                print(&tenants::set_status(s, ACTOR, &id, "suspended").await?)
            }
            TenantCommand::Resume { id } => {
                print(&tenants::set_status(s, ACTOR, &id, "active").await?)
            }
            TenantCommand::SetTier { id, tier } => print(&p.set_tier(ACTOR, &id, &tier).await?),
            TenantCommand::Delete { id, yes } => {
                if !yes {
                    bail!(
                        "deleting {id} removes its keys and usage for good; add --yes to confirm"
                    );
                }
                print(&privacy::delete_tenant(s, ACTOR, &id).await?)
            }
            TenantCommand::Export { id, output } => {
                let e = privacy::export(s, ACTOR, &id).await?;
                let json = serde_json::to_string_pretty(&e)?;
                match output {
                    Some(path) => {
                        std::fs::write(&path, json)
                            .with_context(|| format!("writing {}", path.display()))?;
                        eprintln!("wrote {}", path.display());
                        Ok(())
                    }
                    None => {
                        println!("{json}");
                        Ok(())
                    }
                }
            }
        },
        AdminCommand::Key(k) => match k {
            KeyCommand::Create { tenant, name } => {
                let key = p.create_key(ACTOR, &tenant, &name).await?;
                eprintln!("the key is shown this once; store it now");
                print(&key)
            }
            KeyCommand::List { tenant } => print(&tenants::list_keys(s, &tenant).await?),
            KeyCommand::Rotate { key_id } => {
                let key = tenants::rotate_key(s, ACTOR, &key_id).await?;
                eprintln!("{key_id} is revoked; the new key is shown this once");
                print(&key)
            }
            KeyCommand::Revoke { key_id } => print(&tenants::revoke_key(s, ACTOR, &key_id).await?),
        },
        AdminCommand::Usage {
            tenant,
            from,
            to,
            csv,
        } => {
            tenants::get_tenant(s, &tenant).await?;
            let to = match to {
                Some(d) => bitnet_platform::db::parse_day(&d)?,
                None => today(),
            };
            let from = match from {
                Some(d) => bitnet_platform::db::parse_day(&d)?,
                None => {
                    bitnet_platform::db::day_of(bitnet_platform::db::now_ms() - 29 * 86_400_000)
                }
            };
            if csv {
                print!(
                    "{}",
                    metering::records_csv(&metering::records(s, &tenant, &from, &to).await?)
                );
                Ok(())
            } else {
                print(&metering::daily(s, &tenant, &from, &to).await?)
            }
        }
        AdminCommand::Invoice { tenant, month, csv } => {
            let t = tenants::get_tenant(s, &tenant).await?;
            let month = month.unwrap_or_else(|| today()[..7].to_string());
            let inv = p.invoice(&t, &month).await?;
            if csv {
                print!("{}", bitnet_platform::billing::invoice_csv(&inv));
                Ok(())
            } else {
                print(&inv)
            }
        }
        AdminCommand::Audit(AuditCommand::Verify) => {
            let v = audit::verify(s).await?;
            print(&v)?;
            if let Some(problem) = v.problem {
                bail!("the audit chain is broken: {problem}");
            }
            eprintln!("audit chain intact: {} rows", v.rows);
            Ok(())
        }
        AdminCommand::Audit(AuditCommand::List { tenant, limit }) => {
            print(&audit::list(s, tenant.as_deref(), limit.clamp(1, 1_000_000)).await?)
        }
        AdminCommand::Purge { older_than_days } => {
            let days = older_than_days.unwrap_or(p.config.retention_days);
            if days == 0 {
                bail!("give --older-than-days N (no retention_days is configured)");
            }
            let n = privacy::purge(s, ACTOR, days).await?;
            print(&serde_json::json!({ "purged_rows": n, "older_than_days": days }))
        }
    }
}
