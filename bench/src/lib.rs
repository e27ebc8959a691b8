//! Shared pieces of podwire's benchmarks: namespaces and temp dirs that clean
//! up after themselves, running a CNI plugin exactly as a runtime does, and
//! the statistics printed in the tables. Each benchmark is a binary in
//! `src/bin/` started by a script in `bench/`.

pub mod abuse;
pub mod ingress;
pub mod ns;
pub mod plugin;
pub mod stats;

/// How a benchmark ends: its report as JSON or a table, a distinct exit for
/// an interrupted run (whose guards have cleaned up), and the error chain.
pub fn finish<R: serde::Serialize>(
    bench: &str,
    result: anyhow::Result<R>,
    json: bool,
    print_table: impl FnOnce(&R),
) -> std::process::ExitCode {
    match result {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(err) => {
                        eprintln!("{bench} bench: {err}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            } else {
                print_table(&report);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(_) if ns::interrupted() => {
            eprintln!("{bench} bench: interrupted; what it created is removed");
            std::process::ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("{bench} bench failed: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
