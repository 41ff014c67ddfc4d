//! `berth keys create|ls|revoke`: the API keys services with
//! `auth.api_keys` accept. A key is printed once, when it is made; the host
//! keeps only its hash.

use super::{ClientArgs, output};
use crate::control::admin::api::{CreateKeyRequest, CreatedKeyView, KeyView};
use clap::{Args, Subcommand};
use http::Method;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,

    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a key and print it (the only time it is shown).
    Create {
        /// The key's name: what the services are told as the caller.
        name: String,
        /// A service the key opens (repeat for several).
        #[arg(long = "service", required = true)]
        services: Vec<String>,
        /// How long the key works (`30d`, `12h`); default: until revoked.
        #[arg(long, value_parser = crate::values::units::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List the keys (never the keys themselves).
    Ls,
    /// Revoke a key: it stops working at once.
    Revoke {
        /// The key's name.
        name: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match args.command {
        KeysCommand::Create {
            name,
            services,
            expires,
        } => {
            let req = CreateKeyRequest {
                name,
                services,
                expires_in: expires.map(crate::values::units::format_duration),
            };
            let (_, created): (_, CreatedKeyView) =
                client.send_json(Method::POST, "/v1/keys", &req).await?;
            if args.client.json {
                return output::json(&created);
            }
            println!("{}", created.key);
            eprintln!(
                "berth: API key {} for {} made; it is shown only now: keep it safe",
                created.view.name,
                created.view.services.join(", ")
            );
        }
        KeysCommand::Ls => {
            let keys: Vec<KeyView> = client.get("/v1/keys").await?;
            if args.client.json {
                return output::json(&keys);
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.name.clone(),
                        k.services.join(","),
                        k.state.clone(),
                        k.created.clone(),
                        k.expires.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::table(&["NAME", "SERVICES", "STATE", "CREATED", "EXPIRES"], &rows);
        }
        KeysCommand::Revoke { name } => {
            let path = format!(
                "/v1/keys/{}",
                form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            );
            let revoked: Option<KeyView> = client.delete(&path).await?;
            if args.client.json {
                return output::json(&revoked);
            }
            eprintln!("berth: API key {name} revoked");
        }
    }
    Ok(())
}
