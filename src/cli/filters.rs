//! `--filter=NAME ... BACKEND [KEY=VALUE ...]`: which filters, in order (the
//! first nearest the client), and which of the `key=value`s is whose. As in
//! nbdkit, the filters' parameters are mixed with the backend's in one list;
//! here each key belongs to exactly one layer, and a key no layer takes is an
//! error that names the layers.

use crate::error::Error;
use crate::filter::params::Params;
use crate::filter::{FILTERS, Spec};

use super::backend;

/// `--filter=NAME` as `--filter NAME`: the order of filters matters, and
/// the argument parser finds the two forms in separate passes.
pub fn spaced(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.to_str().and_then(|s| s.strip_prefix("--filter=")) {
            Some(name) => out.extend(["--filter".into(), name.into()]),
            None => out.push(a),
        }
    }
    out
}

/// Sorts `params` between the filters named in `names` and the backend
/// `backend`: the filters' specs (each value checked) and what is left for
/// the backend.
pub fn sort(
    names: &[String],
    backend: &str,
    params: &[String],
) -> Result<(Vec<Spec>, Vec<String>), Error> {
    let entries = names
        .iter()
        .map(|n| lookup(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut specs: Vec<Spec> = entries
        .iter()
        .map(|e| Spec {
            name: e.name,
            params: Params::default(),
        })
        .collect();
    let mut rest = Vec::new();
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            rest.push(param.clone()); // the backend's bare value
            continue;
        };
        match entries.iter().position(|e| e.takes(key)) {
            Some(i) => specs[i].params.0.push((key.to_string(), value.to_string())),
            None if entries.is_empty() || backend::takes(backend, key) => rest.push(param.clone()),
            None => return Err(unknown_key(key, &entries, backend)),
        }
    }
    // Each filter checks its values now: a bad one is a usage error, before
    // anything starts.
    crate::filter::build(&specs).map_err(Error::usage)?;
    Ok((specs, rest))
}

fn lookup(name: &str) -> Result<&'static crate::filter::registry::Entry, Error> {
    FILTERS.iter().find(|e| e.name == name).ok_or_else(|| {
        let known: Vec<&str> = FILTERS.iter().map(|e| e.name).collect();
        Error::usage(format!(
            "unknown filter '{name}': nbdlite has {}",
            known.join(", ")
        ))
    })
}

/// "unknown parameter 'k': not one of the delay filter's, the error
/// filter's or the memory backend's".
fn unknown_key(key: &str, entries: &[&crate::filter::registry::Entry], backend: &str) -> Error {
    let mut layers: Vec<String> = entries
        .iter()
        .map(|e| format!("the {} filter's", e.name))
        .collect();
    layers.push(format!("the {backend} backend's"));
    let last = layers.pop().unwrap_or_default(); // the backend's, pushed just above
    let list = match layers.is_empty() {
        true => last,
        false => format!("{} or {last}", layers.join(", ")),
    };
    Error::usage(format!("unknown parameter '{key}': not one of {list}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn each_key_goes_to_its_layer() {
        let (specs, rest) = sort(
            &words("delay error"),
            "memory",
            &words("1G rdelay=1 error-rate=10% size=2G"),
        )
        .expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].params.get("rdelay"), Some("1"));
        assert_eq!(specs[1].params.get("error-rate"), Some("10%"));
        assert_eq!(rest, words("1G size=2G"));
    }

    #[test]
    fn the_curl_backend_keeps_its_many_keys() {
        let (specs, rest) = sort(
            &words("cow"),
            "curl",
            &words("http://h/d.img unix-socket-path=/s cow-on-read=true connections=2"),
        )
        .expect("valid");
        assert_eq!(specs[0].params.get("cow-on-read"), Some("true"));
        assert_eq!(
            rest,
            words("http://h/d.img unix-socket-path=/s connections=2")
        );
    }

    #[test]
    fn mistakes_name_what_is_wrong() {
        let e = |f: &str, p: &str| {
            sort(&words(f), "memory", &words(p))
                .unwrap_err()
                .to_string()
        };
        assert!(e("dealy", "1G").contains("unknown filter 'dealy'"));
        let unknown = e("delay error", "1G rdelya=1");
        assert!(unknown.contains("unknown parameter 'rdelya'"), "{unknown}");
        assert!(unknown.contains("delay filter's, the error filter's or the memory backend's"));
        assert!(e("delay", "1G rdelay=soon").contains("rdelay"));
    }
}
