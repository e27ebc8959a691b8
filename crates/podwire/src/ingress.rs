//! `podwire ingress`: the ingress controller's HTTP proxy, and
//! `podwire ingress plan`, which prints the route table it would serve.

use std::net::SocketAddr;

use anyhow::Result;
use clap::{Args, Subcommand};
use podwire_ingress::{BackendRef, CompileOptions, DEFAULT_CLASS};
use podwire_model::Store;

#[derive(Args)]
pub struct IngressArgs {
    /// Where cluster state comes from: `files:DIR` (a lab's store).
    #[arg(long, global = true)]
    source: Option<String>,
    /// The IngressClass name served (Ingresses without a class are served too).
    #[arg(long, global = true, default_value = DEFAULT_CLASS)]
    class: String,
    /// Controller-wide fallback when no rule or Ingress defaultBackend
    /// matches, as NAMESPACE/SERVICE:PORT (default: 404).
    #[arg(long, global = true)]
    default_backend: Option<String>,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "0.0.0.0:80")]
    listen: SocketAddr,
    #[command(subcommand)]
    action: Option<IngressAction>,
}

#[derive(Subcommand)]
enum IngressAction {
    /// Print the route table the proxy would serve, without serving.
    Plan,
}

pub fn run(args: IngressArgs) -> Result<()> {
    let dir = crate::source_dir(args.source.as_deref())?;
    let store = Store::open(&dir);
    let options = CompileOptions {
        class: args.class,
        fallback: args
            .default_backend
            .as_deref()
            .map(str::parse::<BackendRef>)
            .transpose()?,
    };
    if let Some(IngressAction::Plan) = args.action {
        let (generation, table) = podwire_ingress::proxy::load(&store, &options)?;
        println!(
            "# podwire ingress plan: {} (generation {generation}, {} Ingresses of class {:?})",
            dir.display(),
            table.ingresses.len(),
            options.class
        );
        print!("{table}");
        return Ok(());
    }
    podwire_ingress::proxy::run(args.listen, store, options)?;
    Ok(())
}
