//! Relaying in userspace: what the proxy does when a connection is not spliced, and
//! the baseline the splice is measured against.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

/// Copy `from` to `to` until `from` ends, then pass the end on (half-close).
fn pump(mut from: TcpStream, mut to: TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 65536];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A reset on one side resets the other rather than hanging it.
                let _ = to.shutdown(Shutdown::Both);
                return Err(e);
            }
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            let _ = from.shutdown(Shutdown::Both);
            return Err(e);
        }
        total += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    Ok(total)
}

/// Relay both directions until both have ended.
pub fn relay(client: TcpStream, backend: TcpStream) {
    let (Ok(c2), Ok(b2)) = (client.try_clone(), backend.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || pump(c2, b2));
    let _ = pump(backend, client);
    if let Ok(h) = up {
        let _ = h.join();
    }
}

/// Copy exactly `n` bytes from `from` to `to`, then close `from` (the rest of a
/// response whose next request came early).
pub fn copy_exact(mut from: TcpStream, mut to: &TcpStream, n: u64) -> io::Result<()> {
    let mut left = n;
    let mut buf = vec![0u8; 65536];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let got = match from.read(&mut buf[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..got])?;
        left -= got as u64;
    }
    Ok(())
}
