//! `sluice up`: the one-command local experience. Starts a server on the embedded store,
//! builds the manifest's functions whose sources changed, applies the manifest, serves the
//! app's pages, and follows the functions' logs; when the manifest or a function's sources
//! change, builds and applies again, until Ctrl-C stops the server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;

use crate::apply;
use crate::client::{Client, ClientArgs, Output, encode};
use crate::manifest::{self, Manifest};

/// How often the manifest and the functions' sources are checked for changes, and new
/// log records fetched.
const POLL: Duration = Duration::from_millis(500);
/// Most log records fetched per function per poll.
const LOG_PAGE: u32 = 1_000;

#[derive(clap::Args)]
pub struct UpArgs {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = manifest::DEFAULT_FILE)]
    file: PathBuf,
    /// Do not print the functions' invocation logs.
    #[arg(long)]
    no_follow: bool,
    #[command(flatten)]
    serve: crate::ServeArgs,
}

/// The manifest's text as it is now, if it can be read. Compared by content rather than
/// modification time: an editor's save can land as a truncation and a write within one
/// tick of the file system's clock.
fn manifest_text(path: &std::path::Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > manifest::SIZE_MAX {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// Builds what changed and applies the manifest, printing the outcome; an error is
/// printed, not returned, so that the server keeps running while the user fixes it.
/// Returns whether it succeeded.
async fn apply_and_print(client: &Client, m: &Manifest) -> bool {
    match apply::apply(client, m, false).await {
        Ok(applied) => {
            apply::print(&applied, false, Output::Human);
            true
        }
        Err(e) => {
            eprintln!("apply failed: {e:#}");
            false
        }
    }
}

/// Whether any function must be rebuilt (an error reading its sources counts as no).
fn sources_changed(m: &Manifest) -> bool {
    apply::builds(m).any(|(_, f)| apply::build_reason(m.dir(), f).ok().flatten().is_some())
}

/// The next log record of each followed function.
struct Follow {
    after: BTreeMap<String, u64>,
}

impl Follow {
    /// Follows `names` from their current ends; names already followed keep their place.
    async fn track(&mut self, client: &Client, names: impl Iterator<Item = String>) {
        for name in names {
            if self.after.contains_key(&name) {
                continue;
            }
            let mut after = 0;
            // Skip what was logged before: page to the end.
            while let Ok(Some(v)) = client
                .get_optional(&format!(
                    "/v1/functions/{}/logs?after={after}&limit={LOG_PAGE}",
                    encode(&name)
                ))
                .await
            {
                match v["next"].as_u64() {
                    Some(next) if next > after => after = next,
                    _ => break,
                }
            }
            self.after.insert(name, after);
        }
    }

    /// Prints the records logged since the last poll, each line led by its function.
    async fn poll(&mut self, client: &Client) {
        for (name, after) in self.after.iter_mut() {
            let path = format!(
                "/v1/functions/{}/logs?after={after}&limit={LOG_PAGE}",
                encode(name)
            );
            let Ok(v) = client.call(Method::GET, &path, None).await else {
                continue;
            };
            for r in v["records"].as_array().into_iter().flatten() {
                print!("{name} | ");
                crate::function::print_record(false, r);
            }
            *after = v["next"].as_u64().unwrap_or(*after);
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut m = Manifest::load(&args.file)?;
    // What `up` prints is the app's: the server speaks up only for warnings unless
    // SLUICE_LOG asks for more.
    let spans = crate::init_server_logging(&args.serve, "warn")?;
    let token = args.serve.auth_token.clone();
    let mut config = crate::server_config(args.serve)?;
    if config.api.site_dir.is_none() {
        config.api.site_dir = m.app.site.as_ref().map(|s| m.dir().join(s));
    }
    let site = config.api.site_dir.is_some();
    let server = sluice_server::Server::bind(config).await?;
    let addr = server.local_addr();
    let mut serving = tokio::spawn(server.run(crate::shutdown_signal()));
    println!(
        "sluice up: {} from {}",
        m.app.name.as_deref().unwrap_or("app"),
        args.file.display()
    );
    println!("listening on http://{addr}");
    let client = Client::new(&ClientArgs {
        server: format!("http://{addr}"),
        auth_token: token,
        output: Output::Human,
    })?;
    let mut seen = manifest_text(&args.file);
    // The sources as they were when an apply last failed: not retried until edited.
    let mut failed_at = None;
    if !apply_and_print(&client, &m).await {
        failed_at = apply::sources_stamp(&m);
    }
    if site {
        println!("pages: http://{addr}/app/");
    }
    let mut follow = Follow {
        after: BTreeMap::new(),
    };
    if !args.no_follow {
        follow
            .track(&client, m.functions.keys().map(|n| n.to_string()))
            .await;
        println!(
            "following the logs of {} functions; Ctrl-C stops",
            m.functions.len()
        );
    }
    loop {
        tokio::select! {
            ended = &mut serving => {
                ended??;
                break;
            }
            () = tokio::time::sleep(POLL) => {}
        }
        let now = manifest_text(&args.file);
        if let Some(text) = now.as_ref().filter(|_| now != seen) {
            let parsed = Manifest::parse(&args.file, text.clone());
            seen = now;
            match parsed {
                Ok(new) => {
                    println!("{} changed: applying", args.file.display());
                    m = new;
                    failed_at = None;
                    if !apply_and_print(&client, &m).await {
                        failed_at = apply::sources_stamp(&m);
                    }
                }
                Err(e) => eprintln!("{e}; keeping the manifest applied last"),
            }
        } else if sources_changed(&m) {
            let stamp = apply::sources_stamp(&m);
            if failed_at.is_none() || stamp != failed_at {
                failed_at = None;
                if !apply_and_print(&client, &m).await {
                    failed_at = stamp;
                }
            }
        }
        if !args.no_follow {
            follow
                .track(&client, m.functions.keys().map(|n| n.to_string()))
                .await;
            follow.poll(&client).await;
        }
    }
    crate::flush_spans(spans).await
}
