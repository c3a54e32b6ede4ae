use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use moongate_controller::crd::LuaRoute;

/// The Moongate controller.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the LuaRoute CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", serde_saphyr::to_string(&LuaRoute::crd())?),
    }
    Ok(())
}
