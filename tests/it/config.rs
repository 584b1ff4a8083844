//! The `croupier` binary's configuration from the environment, as an operator meets it.

use crate::pipeline::croupier;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn env_croupier_url_set_for_a_client_does_not_stop_the_server() {
    let (ok, out) =
        croupier(&["check"], &env(&[("CROUPIER_URL", "http://127.0.0.1:8080"), ("CROUPIER_SERVER__SHARDS", "2")]));
    assert!(ok, "croupier check with CROUPIER_URL set: {out}");
    assert!(out.contains("configuration ok: 2 shard(s)"), "{out}");
}

#[test]
fn env_a_bad_override_names_the_variable() {
    let (ok, out) = croupier(&["check"], &env(&[("CROUPIER_SERVER__SHARDS", "two")]));
    assert!(!ok, "a bad value must stop the process: {out}");
    assert!(out.contains("CROUPIER_SERVER__SHARDS") && out.contains("server.shards"), "{out}");
}
