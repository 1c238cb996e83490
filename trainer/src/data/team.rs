//! The team's real wedges and released files in `../shared/data` (next to a developer's or CI's
//! checkout, never shipped), for the tests that check against real data. A user's clone has no
//! such folder: those tests then skip, saying so on stderr; where the environment variable
//! [`REQUIRE_VAR`] is set (CI sets it), a missing file fails the test instead of skipping it.
use std::path::PathBuf;

/// Set (to anything) to make real-data tests fail instead of skipping when the data is absent.
pub const REQUIRE_VAR: &str = "BCAE_REQUIRE_REAL_DATA";

/// `../shared/data/<relative>` when it exists. Where it does not: `None` after a SKIPPED line on
/// stderr naming `what`, or a panic when [`REQUIRE_VAR`] is set.
pub fn team_data(relative: &str, what: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(relative);
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "{what} needs {} (the team's real data, absent in a user's clone)",
        path.display()
    );
    assert!(
        std::env::var_os(REQUIRE_VAR).is_none(),
        "{message}; {REQUIRE_VAR} is set, so real-data tests may not skip"
    );
    eprintln!("SKIPPED: {message}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_file_skips_unless_required() {
        // (Only this test touches the variable, and only for a file that cannot exist.)
        if std::env::var_os(REQUIRE_VAR).is_some() {
            let r = std::panic::catch_unwind(|| team_data("no-such-file.npy", "this test"));
            assert!(r.is_err());
        } else {
            assert_eq!(team_data("no-such-file.npy", "this test"), None);
        }
    }
}
