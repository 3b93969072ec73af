//! Integer socket options that socket2 does not offer (`SO_RCVLOWAT`,
//! `IP_BIND_ADDRESS_NO_PORT`): the crate's one `setsockopt` and one `getsockopt`.

use std::io;
use std::os::fd::RawFd;

/// Sets option `name` at `level` of socket `fd` to `value`.
pub(crate) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live `c_int` of the length passed, read by the kernel
    // during the call only; an fd that is not a socket, or an unknown option, is refused
    // with an error.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Option `name` at `level` of socket `fd`.
pub(crate) fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, a live `c_int`, and the
    // length it wrote into `len`, during the call only.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}
