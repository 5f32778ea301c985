//! Process limits raised at start, whatever launched the process.

/// Raises the soft limit of open files to the hard limit and returns (before, after).
///
/// A gateway holds one descriptor per client connection, and the usual soft limit (1024 under
/// systemd, which keeps `DefaultLimitNOFILE=1024:524288`, systemd/systemd#25478) is far below
/// the thousands of connections a burst opens; past it `accept` fails with EMFILE. The hard
/// limit is what the administrator allows; raising the soft limit up to it needs no privilege.
/// The NixOS module also sets `LimitNOFILE`, but a process started by hand, by compose or by
/// another supervisor gets this too.
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct this frame owns.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct, which is initialised above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}
