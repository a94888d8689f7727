//! Completions and man pages are generated from the clap definitions: whatever commands
//! `chctl --help` lists (today's or tomorrow's), every completion script and the man pages must
//! know them. Nothing here names a command, so a new one is covered without editing this file.

use std::path::Path;
use std::process::Command;

const CHCTL: &str = env!("CARGO_BIN_EXE_chctl");

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The command names under "Commands:" in `--help` output, without `help`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command path a user can type: `["set"], ["node"], ["node", "add"], ...`.
fn command_paths() -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for top in listed_commands(&run(CHCTL, &["--help"])) {
        let sub = listed_commands(&run(CHCTL, &[&top, "--help"]));
        paths.push(vec![top.clone()]);
        paths.extend(sub.into_iter().map(|s| vec![top.clone(), s]));
    }
    assert!(paths.len() >= 10, "too few commands found in --help: {paths:?}");
    paths
}

#[test]
fn completion_scripts_mention_every_command() {
    let paths = command_paths();
    for shell in ["bash", "zsh", "fish"] {
        let script = run(CHCTL, &["completions", shell]);
        for path in &paths {
            let name = path.last().unwrap();
            assert!(
                script.split(|c: char| !c.is_alphanumeric() && c != '-').any(|w| w == name),
                "{shell} completions do not mention `{}`",
                path.join(" ")
            );
        }
        // Flags are completed too, not only command names.
        assert!(script.contains("socket"), "{shell} completions lack --socket");
    }
}

#[test]
fn bash_completion_script_is_valid_bash() {
    if Command::new("bash").arg("--version").output().is_err() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chctl.bash");
    std::fs::write(&file, run(CHCTL, &["completions", "bash"])).unwrap();
    // Sourcing it defines the function and registers it with `complete`.
    let out =
        Command::new("bash").arg("-c").arg(". \"$1\" && complete -p chctl").arg("bash").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chctl"));
}

#[test]
fn unknown_shell_is_a_usage_error() {
    let out = Command::new(CHCTL).args(["completions", "no-such-shell"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A page has the roff headings man(1) needs and, where groff is installed, renders without a
/// single warning.
fn check_page(page: &Path) {
    let text = std::fs::read_to_string(page).unwrap();
    for heading in [".TH ", ".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION"] {
        assert!(text.contains(heading), "{} lacks {heading}", page.display());
    }
    if let Ok(out) = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(page).output() {
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn man_pages_cover_every_command_and_render() {
    let dir = tempfile::tempdir().unwrap();
    run(CHCTL, &["man", "--out", dir.path().to_str().unwrap()]);
    let main = dir.path().join("chctl.1");
    check_page(&main);
    let text = std::fs::read_to_string(&main).unwrap();
    assert!(text.contains("chctl"));
    for path in command_paths() {
        let page = dir.path().join(format!("chctl-{}.1", path.join("-")));
        assert!(page.exists(), "no man page {}", page.display());
        check_page(&page);
    }
    // `chctl man` is a command like the others (the README documents it), with its page.
    assert!(dir.path().join("chctl-man.1").exists());
    for section in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
        assert!(text.contains(section), "chctl.1 lacks {section}");
    }
    // Rendered by man(1) when there is one: the page a user reads names the command.
    if let Ok(out) = Command::new("man").arg("-l").arg(&main).env("MANWIDTH", "80").env("MANPAGER", "cat").output() {
        if out.status.success() {
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(shown.contains("NAME") && shown.contains("SUBCOMMANDS"), "{shown}");
        }
    }
}

#[test]
fn chd_man_pages_render() {
    let chd = Path::new(CHCTL).with_file_name("chd");
    assert!(chd.exists(), "{} is missing: run `cargo build -p chd` first", chd.display());
    let dir = tempfile::tempdir().unwrap();
    run(chd.to_str().unwrap(), &["man", "--out", dir.path().to_str().unwrap()]);
    let page = dir.path().join("chd.1");
    check_page(&page);
    // Every flag of `chd --help` is documented on the page.
    let help = run(chd.to_str().unwrap(), &["--help"]);
    let text = std::fs::read_to_string(&page).unwrap();
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")).map(|w| w.trim_end_matches(',')) {
        let roff = flag.replace('-', "\\-");
        assert!(text.contains(flag) || text.contains(&roff), "chd.1 does not document {flag}");
    }
    for sub in listed_commands(&help) {
        check_page(&dir.path().join(format!("chd-{sub}.1")));
    }
    assert!(!dir.path().join("chd-worker.1").exists(), "the hidden worker command got a page");
}
