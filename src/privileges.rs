//! `-u USER` / `-g GROUP`: giving up root once the sockets are bound, the
//! backend is open and the pidfile is written, before any client is served.

use std::path::Path;

use crate::error::Error;
use crate::sys;

/// Who to become. A user comes with a group: `-g`, else the user's primary
/// group, so that no root group (nor root's supplementary groups) stays.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
}

impl Identity {
    /// Looks the names (or numbers) up now, while /etc is surely readable.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, Error> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let gid = group.map(resolve_group).transpose()?;
        let Some(u) = user else {
            return Ok(Some(Identity { uid: None, gid }));
        };
        let (uid, primary) = resolve_user(u)?;
        let gid = match gid.or(primary) {
            Some(g) => g,
            None => {
                let why = if NSS {
                    "not in the password database, so its group is unknown"
                } else {
                    "a static binary cannot look up its group"
                };
                return Err(Error::usage(format!("-u {u}: {why}: give -g GROUP too")));
            }
        };
        Ok(Some(Identity {
            uid: Some(uid),
            gid: Some(gid),
        }))
    }

    /// Hands a file we made as root (the private directory and socket of
    /// `-U -`) to the new identity, so that it can still be used and removed.
    pub fn give(&self, path: &Path) -> Result<(), Error> {
        std::os::unix::fs::chown(path, self.uid, self.gid)
            .map_err(Error::setup(format!("chown {}", path.display())))
    }

    /// Drops root's privileges for good.
    pub fn assume(&self) -> Result<(), Error> {
        sys::change_identity(self.uid, self.gid).map_err(|e| {
            let who = [
                self.uid.map(|u| format!("uid {u}")),
                self.gid.map(|g| format!("gid {g}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ");
            Error::Setup(format!("cannot change to {who}"), e)
        })?;
        log::debug!("running as uid {:?} gid {:?}", self.uid, self.gid);
        Ok(())
    }
}

/// Whether names may be looked up. A static glibc binary cannot use NSS
/// safely: glibc loads the modules of nsswitch.conf (nss_systemd…) as shared
/// libraries into a process that has no dynamic libc, and a lookup that
/// reaches one can crash. There only numeric ids are taken, without a lookup.
const NSS: bool = !cfg!(target_feature = "crt-static");

/// What to say when a static binary is given a name.
fn static_no_names(flag: &str, name: &str, what: &str) -> Error {
    Error::usage(format!(
        "{flag} {name}: this nbdlite is a static binary, which cannot look names up \
         (glibc's NSS needs the shared libc): give a numeric {what}"
    ))
}

/// A name, or else a number: (uid, primary gid if the user is known).
fn resolve_user(u: &str) -> Result<(libc::uid_t, Option<libc::gid_t>), Error> {
    if !NSS {
        let uid = u.parse().map_err(|_| static_no_names("-u", u, "uid"))?;
        return Ok((uid, None));
    }
    if let Some((uid, gid)) = sys::user_by_name(u).map_err(Error::setup(format!("-u {u}")))? {
        return Ok((uid, Some(gid)));
    }
    let uid: libc::uid_t = u
        .parse()
        .map_err(|_| Error::usage(format!("-u: no such user: {u}")))?;
    let gid = sys::user_by_id(uid).map_err(Error::setup(format!("-u {u}")))?;
    Ok((uid, gid))
}

fn resolve_group(g: &str) -> Result<libc::gid_t, Error> {
    if !NSS {
        return g.parse().map_err(|_| static_no_names("-g", g, "gid"));
    }
    match sys::group_by_name(g).map_err(Error::setup(format!("-g {g}")))? {
        Some(gid) => Ok(gid),
        None => g
            .parse()
            .map_err(|_| Error::usage(format!("-g: no such group: {g}"))),
    }
}
