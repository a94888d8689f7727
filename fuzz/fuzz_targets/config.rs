//! The config file a user writes (`/etc/chd/chd.toml`): TOML text -> the file's keys ->
//! settings, through the same resolution chd runs at start (`Settings::resolve_text`), then
//! settled against what an existing data dir fixes. Settings that resolve must render
//! (`chd --check-config`) to a file that resolves to the same settings.
#![no_main]

use std::path::Path;

use chd_daemon::config::{ConfigArgs, Fixed, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [r, w, n, after, text @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let path = Path::new("/fuzz/chd.toml");
    let args = ConfigArgs::default();
    let Ok(settings) = Settings::resolve_text(&args, path, text) else { return };

    let mut rendered = settings.render();
    if let Some(pass) = &settings.requirepass {
        // Never rendered (it is a secret), so given again here.
        rendered += &format!("requirepass = {}\n", toml_string(&pass.0));
    }
    let mut again = Settings::resolve_text(&args, path, &rendered)
        .unwrap_or_else(|e| panic!("rendered settings do not resolve: {e:#}\n{rendered}"));
    // Rendering writes every key, so all are explicit the second time.
    again.nodes_explicit = settings.nodes_explicit;
    again.replicas_explicit = settings.replicas_explicit;
    again.write_quorum_explicit = settings.write_quorum_explicit;
    assert_eq!(again, settings, "rendered:\n{rendered}");
    let _ = settings.changes(&again);

    let fixed = Fixed {
        replicas: u32::from(*r),
        write_quorum: (*w != 0).then_some(u32::from(*w)),
        nodes: u32::from(*n),
        nodes_after_change: (*after != 0).then_some(u32::from(*after)),
    };
    let mut settled = settings.clone();
    let _ = settled.settle(&fixed);
});

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if c.is_control() => out += &format!("\\u{:04x}", u32::from(c)),
            c => out.push(c),
        }
    }
    out + "\""
}
