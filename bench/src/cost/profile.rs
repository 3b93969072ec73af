//! Reading a callgrind profile, and whose code each instruction in it is: the core's,
//! an LND's, the benchmark's, or (what none of them called) the runtime's.

use std::collections::HashMap;
use std::path::Path;

/// Who instructions are counted to: code by the file it was written in ([`parse`]); what
/// is in no owner's code goes with its function, which is one of the first three by its
/// name or shares it among its callers' owners; what no owner called (thread start, the
/// loader, `main`'s set-up) is the runtime's.
pub(super) const OWNERS: [&str; 4] = ["core", "lnd", "bench", "runtime"];
pub(super) const CORE: usize = 0;
pub(super) const LND: usize = 1;
pub(super) const BENCH: usize = 2;
pub(super) const RUNTIME: usize = 3;

/// Owner `i`'s name in a report's keys, the LND's as `lnd` (`mem_lnd`, `tcp_lnd`).
pub(super) fn owner_name(i: usize, lnd: &'static str) -> &'static str {
    if i == LND {
        lnd
    } else {
        OWNERS[i]
    }
}

/// The owner a function has by its name, if any: by the path it is defined under, not by
/// its generic arguments (`Vec<lanet::mem::X>::push` is the standard library's, shared
/// among its callers), and for `<X as Trait>::f` by the type `X`.
fn owner_by_name(f: &str) -> Option<usize> {
    let path = defined_under(f);
    if path.starts_with("lanet::time::") || path.starts_with("lanet::sys::") {
        // Clocks, time arithmetic and the system-call wrappers are utilities like the
        // standard library's, counted to whoever uses them: the in-memory LND reads a
        // clock for its simulated delays and signals an eventfd to wake its peer, and
        // those are its own; the driver loop's are the core's. (A clock read is
        // `lanet::sys::monotonic_nanos`, whether or not it is inlined into `now`.) By
        // file the same: see [`owner_by_file`].
        None
    } else if path.starts_with("lanet::mem::") || path.starts_with("lanet_lnd_tcp::") {
        Some(LND)
    } else if path.starts_with("lanet_bench::") {
        Some(BENCH)
    } else if path.starts_with("lanet::") {
        Some(CORE)
    } else {
        None
    }
}

/// The path a function is defined under: the self type of `<X as Trait>::f` (and of
/// `<impl Trait for X>::f`), else the name, generic arguments left out either way.
fn defined_under(f: &str) -> String {
    if let Some(inner) = f.strip_prefix("<impl ") {
        // Past the top-level " for ", if any.
        let mut depth = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '<' => depth += 1,
                '>' if depth == 0 => break,
                '>' => depth -= 1,
                ' ' if depth == 0 && inner[i..].starts_with(" for ") => {
                    return defined_under(&format!("<{}", &inner[i + 5..]));
                }
                _ => {}
            }
        }
        return defined_under(&format!("<{inner}"));
    }
    if let Some(inner) = f.strip_prefix('<') {
        // Up to the matching '>' or a top-level " as ".
        let mut depth = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '<' => depth += 1,
                '>' if depth == 0 => return shorten(&inner[..i]),
                '>' => depth -= 1,
                ' ' if depth == 0 && inner[i..].starts_with(" as ") => return shorten(&inner[..i]),
                _ => {}
            }
        }
    }
    shorten(f)
}

/// Instructions counted in one run: in all, and per function.
pub(super) struct Counts {
    pub(super) total: u64,
    functions: HashMap<String, Function>,
}

/// One function's instructions: its own, and what the calls to it cost (inclusive),
/// each split by the owner of the code it is in (see [`parse`]).
#[derive(Default)]
struct Function {
    /// Its own instructions in code with no owner (a library function's own, or lanet's
    /// clocks and system calls in it): they go with the function, to its owner by name
    /// or its callers'.
    unowned: u64,
    /// Its own instructions in each owner's code, by owner: the function's own code, or
    /// code of another owner's inlined into it, with the library code inlined within
    /// that.
    owned_lines: [u64; 4],
    /// What the calls to it cost when made from code with no owner, by the function that
    /// made them.
    callers: HashMap<String, u64>,
    /// What the calls to it cost when made from each owner's code, by owner.
    called_from_owned: [u64; 4],
}

impl Counts {
    /// Instructions per owner ([`OWNERS`]): each function's own, in each owner's code as
    /// [`parse`] found it, the rest shared as [`Counts::shares`]. They add up to the
    /// total.
    pub(super) fn owned(&self) -> [f64; 4] {
        let shares = self.shares();
        let mut owned = [0.0; 4];
        for (name, f) in &self.functions {
            for (i, share) in shares[name.as_str()].iter().enumerate() {
                owned[i] += f.unowned as f64 * share + f.owned_lines[i] as f64;
            }
        }
        owned
    }

    /// What part of each function's `unowned` instructions each owner ([`OWNERS`])
    /// has: all of them for a function owned by name, else shared in proportion to what
    /// the calls to it cost, among the owners of the code the calls were made from and
    /// (for calls made from code with no owner) the shares of the functions that made
    /// them.
    fn shares(&self) -> HashMap<&str, [f64; 4]> {
        let owners: HashMap<&str, Option<usize>> = self
            .functions
            .keys()
            .map(|name| (name.as_str(), owner_by_name(name)))
            .collect();
        // Every caller is a function of the profile (it has its own `fn=`), so every name
        // looked up below has a share.
        let mut shares: HashMap<&str, [f64; 4]> = owners
            .iter()
            .map(|(&name, owner)| {
                let mut share = [0.0; 4];
                share[owner.unwrap_or(RUNTIME)] = 1.0;
                (name, share)
            })
            .collect();
        // Up the calls, a level a pass: a few dozen passes settle any call chain here.
        for _ in 0..64 {
            let mut changed = false;
            for (name, f) in &self.functions {
                if owners[name.as_str()].is_some() {
                    continue;
                }
                let weight: u64 = f
                    .callers
                    .iter()
                    .filter(|(c, _)| *c != name)
                    .map(|(_, &w)| w)
                    .sum::<u64>()
                    + f.called_from_owned.iter().sum::<u64>();
                if weight == 0 {
                    continue;
                }
                let mut share = [0.0; 4];
                for (i, &w) in f.called_from_owned.iter().enumerate() {
                    share[i] += w as f64 / weight as f64;
                }
                for (caller, &w) in f.callers.iter().filter(|(c, _)| *c != name) {
                    let from = shares[caller.as_str()];
                    for i in 0..4 {
                        share[i] += from[i] * w as f64 / weight as f64;
                    }
                }
                let old = shares
                    .insert(name, share)
                    .expect("every function has a share");
                changed |= old.iter().zip(&share).any(|(a, b)| (a - b).abs() > 1e-9);
            }
            if !changed {
                break;
            }
        }
        shares
    }

    /// Each function's instructions of its own that count as the core's: code written in
    /// the core's files wherever it was inlined (an LND's function may have some), and its
    /// share of the rest.
    pub(super) fn core_instructions(&self) -> HashMap<&str, f64> {
        let shares = self.shares();
        self.functions
            .iter()
            .map(|(name, f)| {
                let shared = f.unowned as f64 * shares[name.as_str()][CORE];
                (name.as_str(), shared + f.owned_lines[CORE] as f64)
            })
            .collect()
    }
}

/// Reads a callgrind profile written with `--compress-strings=no --compress-pos=no`: each
/// function's own instructions (cost lines under `fn=`), what each call cost (the cost
/// line after `cfn=` and `calls=`, which is not the caller's own), and the total.
///
/// Each cost line (and each call) counts to the owner of the source file it was written
/// in ([`owner_by_file`]), whatever function it landed in; otherwise what the compiler
/// chose to inline would move instructions between owners (the core's header decoder
/// inlined into the in-memory LND's poll would count as the LND's). Its file is the
/// group's (`fl=`: callgrind groups a function's code by the file of each basic block's
/// first instruction, which may itself be inlined code), or the one an `fi=` switched to;
/// `fe=` switches back to the group's.
///
/// A line in a file without an owner (a library's, or lanet's clocks and system calls)
/// is a heuristic's: it counts to the owner of the inlined code it follows, from the last
/// `fi=` of an owned file up to the next `fe=`, and otherwise to the group's file's owner.
/// So a hash map's probe inlined within the core's code, itself inlined into the LND's
/// poll, is the core's. It can err both ways, within a basic block: library code after
/// an owned span but not within it (the rest of an LND's map probe after the core's NID
/// hash inlined into it) takes the span's owner; library code within an owned span, at
/// the start of a block that starts in a library's file, goes with the group's. In a
/// group whose file has no owner (a library function's own), lines outside owned spans
/// go with the function: its owner by name, or its callers'.
pub(super) fn parse(text: &str) -> Result<Counts, String> {
    let mut functions: HashMap<String, Function> = HashMap::new();
    let mut total = None;
    let mut current: Option<String> = None;
    let mut callee: Option<String> = None;
    let mut after_call = false;
    // The owner of the group's file (`fl=`), and of the code the next lines are in (see
    // above).
    let mut block_file_owner = None;
    let mut around_owner = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("fn=") {
            current = Some(name.to_owned());
            around_owner = block_file_owner;
            functions.entry(name.to_owned()).or_default();
        } else if let Some(file) = line.strip_prefix("fl=") {
            block_file_owner = owner_by_file(file);
            around_owner = block_file_owner;
        } else if let Some(file) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            around_owner = match line.starts_with("fe=") {
                // Back in the group's own file.
                true => block_file_owner,
                false => owner_by_file(file).or(around_owner),
            };
        } else if let Some(name) = line.strip_prefix("cfn=") {
            callee = Some(name.to_owned());
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if let Some(t) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            total = t.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            let ir: u64 = line
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("not a cost line: {line:?}"))?;
            let f = current
                .clone()
                .ok_or_else(|| format!("a cost line before any fn=: {line:?}"))?;
            if std::mem::take(&mut after_call) {
                let g = callee
                    .clone()
                    .ok_or_else(|| format!("calls= without cfn=: {line:?}"))?;
                let g = functions.entry(g).or_default();
                match around_owner {
                    Some(owner) => g.called_from_owned[owner] += ir,
                    None => *g.callers.entry(f).or_default() += ir,
                }
            } else {
                let f = functions.entry(f).or_default();
                match around_owner {
                    Some(owner) => f.owned_lines[owner] += ir,
                    None => f.unowned += ir,
                }
            }
        }
    }
    let total = total.ok_or("no totals: or summary: line in the callgrind profile")?;
    Ok(Counts { total, functions })
}

/// The owner of code written in source file `file`, if it is a file of this workspace's
/// that has one: the LND's (the in-memory one's, `transport/src/mem/`, or the TCP one's,
/// `lnd-tcp/src/`), the benchmark's
/// (`bench/src/`), the core's (the rest of `transport/src/`). Clocks and system calls
/// (`transport/src/time.rs`, `sys.rs`) have none, as by name ([`owner_by_name`]), nor do
/// the other crates' files and the libraries'.
fn owner_by_file(file: &str) -> Option<usize> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench crate is in the workspace");
    // The compiler names a file by its absolute path, or by one relative to the
    // workspace.
    let path = Path::new(file);
    let path = path.strip_prefix(workspace).unwrap_or(path);
    if path.starts_with("transport/src/mem") || path.starts_with("lnd-tcp/src") {
        Some(LND)
    } else if path.starts_with("transport/src/time.rs") || path.starts_with("transport/src/sys.rs")
    {
        None
    } else if path.starts_with("transport/src") {
        Some(CORE)
    } else if path.starts_with("bench/src") {
        Some(BENCH)
    } else {
        None
    }
}

/// A function's name without its generic arguments, trimmed for a table.
pub(super) fn shorten(f: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in f.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<..>");
                }
                depth += 1;
            }
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    if out.chars().count() > 100 {
        out = out.chars().take(97).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_code_is_counted_to_its_callers() {
        // The core calls get_mut (10) and malloc (100 in all); the in-memory LND calls
        // malloc too (50); get_mut is a library's, and so is malloc, which get_mut calls.
        let text = "events: Ir\n\
                    fn=lanet::node::Node::handle\n\
                    10 5\n\
                    cfn=hashbrown::map::HashMap::get_mut\n\
                    calls=1 0\n\
                    11 110\n\
                    12 7\n\
                    fn=hashbrown::map::HashMap::get_mut\n\
                    1 10\n\
                    cfn=malloc\n\
                    calls=1 0\n\
                    2 100\n\
                    fn=malloc\n\
                    1 150\n\
                    fn=lanet::mem::MemLnd::poll\n\
                    3 20\n\
                    cfn=malloc\n\
                    calls=1 0\n\
                    4 50\n\
                    fn=main\n\
                    1 3\n\
                    summary: 195\n";
        let c = parse(text).unwrap();
        assert_eq!(c.total, 195);
        assert_eq!(c.functions["lanet::node::Node::handle"].unowned, 12);
        assert_eq!(c.functions["malloc"].unowned, 150);
        assert_eq!(
            c.functions["malloc"].callers["lanet::mem::MemLnd::poll"],
            50
        );
        let owned = c.owned();
        // core: its own 12, get_mut's 10, two thirds of malloc's 150.
        assert!((owned[0] - 122.0).abs() < 1e-6, "{owned:?}");
        assert!((owned[1] - 70.0).abs() < 1e-6, "{owned:?}");
        assert!((owned[RUNTIME] - 3.0).abs() < 1e-6, "{owned:?}");
        // The list of the core's costliest: each function's own, as far as it is the core's.
        let core = c.core_instructions();
        assert!((core["malloc"] - 100.0).abs() < 1e-6, "{core:?}");
        assert!(
            (core["hashbrown::map::HashMap::get_mut"] - 10.0).abs() < 1e-6,
            "{core:?}"
        );
        assert!(
            (core["lanet::node::Node::handle"] - 12.0).abs() < 1e-6,
            "{core:?}"
        );
        assert_eq!(core["lanet::mem::MemLnd::poll"], 0.0);
        assert!(parse("fn=x\n1 2\n").is_err(), "no total");
        assert!(parse("1 2\nsummary: 2\n").is_err(), "no function");
    }

    /// This workspace's file at `rel`, as the compiler names it.
    fn at(rel: &str) -> String {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        workspace.join(rel).to_string_lossy().into_owned()
    }

    #[test]
    fn code_counts_to_the_owner_of_the_file_it_was_written_in() {
        let (mem, codec, lib) = (
            at("transport/src/mem/mod.rs"),
            at("transport/src/wire/codec.rs"),
            "/rustc/abc/library/core/src/num/mod.rs",
        );
        let (driver, fabric, time) = (
            at("transport/src/driver.rs"),
            at("transport/src/mem/fabric.rs"),
            at("transport/src/time.rs"),
        );
        let (hashbrown, nid) = ("/cargo/hashbrown/src/map.rs", at("transport/src/nid.rs"));
        // The in-memory LND's poll, in three groups. Under its own file: its lines (3),
        // the core's header decoder inlined (8), within it a library helper (4) and a
        // clock read (2), its own again (5), a library helper in its own code (7). Under
        // the decoder's file (a group that begins in inlined code): 6, and a call to
        // memcpy (30). Under a library's file: 11 outside any owned code, then the core's
        // NID hash (1) and a library line after it (2), then the group's file again (4).
        // The core's flush has the LND's post inlined (16) and ends inside it; the
        // function after it, in the same file with no new fl=, is the core's (1) and calls
        // memcpy (10). The core's hash map lookup calls memcpy from its own library code
        // (5). memcpy is a library function: its callers'.
        let text = format!(
            "events: Ir\n\
             fl={mem}\nfn=<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll\n10 3\n\
             fi={codec}\n180 8\nfi={lib}\n5 4\nfi={time}\n7 2\n\
             fe={mem}\n11 5\nfi={lib}\n12 7\n\
             fl={codec}\nfn=<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll\n190 6\n\
             cfn=__memcpy_avx_unaligned_erms\ncalls=1 0\n191 30\n\
             fl={hashbrown}\nfn=<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll\n50 11\n\
             fi={nid}\n139 1\nfi={lib}\n6 2\nfe={hashbrown}\n51 4\n\
             fl={driver}\nfn=lanet::driver::Driver::flush\n20 1\n\
             fi={fabric}\n40 16\n\
             fn=lanet::driver::Driver::poll\n30 1\n\
             cfn=__memcpy_avx_unaligned_erms\ncalls=1 0\n31 10\n\
             fl={hashbrown}\nfn=hashbrown::map::HashMap::get\n60 20\n\
             cfn=__memcpy_avx_unaligned_erms\ncalls=1 0\n61 5\n\
             fl={driver}\nfn=lanet::driver::Driver::hand_over\n70 1\n\
             cfn=hashbrown::map::HashMap::get\ncalls=1 0\n71 25\n\
             fl=???\nfn=__memcpy_avx_unaligned_erms\n0 45\n\
             summary: 137\n"
        );
        let c = parse(&text).unwrap();
        let poll = &c.functions["<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll"];
        assert_eq!(
            poll.unowned,
            11 + 4,
            "outside any owned span of a library group"
        );
        assert_eq!(poll.owned_lines, [8 + 4 + 2 + 6 + 1 + 2, 3 + 5 + 7, 0, 0]);
        let flush = &c.functions["lanet::driver::Driver::flush"];
        assert_eq!((flush.unowned, flush.owned_lines), (0, [1, 16, 0, 0]));
        let poll_loop = &c.functions["lanet::driver::Driver::poll"];
        assert_eq!(
            poll_loop.owned_lines,
            [1, 0, 0, 0],
            "not the LND's span before"
        );
        let memcpy = &c.functions["__memcpy_avx_unaligned_erms"];
        assert_eq!(memcpy.unowned, 45);
        assert_eq!(memcpy.called_from_owned, [40, 0, 0, 0]);
        assert_eq!(memcpy.callers["hashbrown::map::HashMap::get"], 5);
        let owned = c.owned();
        // The core: 23 in the LND's poll, 1 + 1 + 1 in its own functions, the map lookup's
        // 20 (its only caller is the core's) and memcpy's 45 (every call to it made in the
        // core's code, or in that lookup); the LND: 15 + 15 + 16.
        assert!((owned[CORE] - 91.0).abs() < 1e-6, "{owned:?}");
        assert!((owned[LND] - 46.0).abs() < 1e-6, "{owned:?}");
        assert!(
            (owned.iter().sum::<f64>() - 137.0).abs() < 1e-6,
            "{owned:?}"
        );
        let core = c.core_instructions();
        assert!((core["<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll"] - 23.0).abs() < 1e-6);
    }

    #[test]
    fn files_have_owners_by_where_they_are_in_the_workspace() {
        let owner = |f: &str| owner_by_file(f).map(|i| OWNERS[i]);
        assert_eq!(owner(&at("transport/src/node/rx.rs")), Some("core"));
        assert_eq!(owner("transport/src/node/rx.rs"), Some("core"), "relative");
        assert_eq!(owner(&at("transport/src/mem/fabric.rs")), Some("lnd"));
        assert_eq!(owner(&at("bench/src/peer.rs")), Some("bench"));
        assert_eq!(owner("transport/src/mem/mod.rs"), Some("lnd"), "relative");
        assert_eq!(owner("bench/src/peer.rs"), Some("bench"), "relative");
        assert_eq!(
            owner(&at("transport/src/memo.rs")),
            Some("core"),
            "a sibling of mem/"
        );
        assert_eq!(owner(&at("transport/src/sys.rs")), None);
        assert_eq!(owner(&at("transport/src/time.rs")), None);
        assert_eq!(owner(&at("lnd-tcp/src/lib.rs")), Some("lnd"));
        assert_eq!(owner(&at("lnd-tcp/src/uring/write.rs")), Some("lnd"));
        assert_eq!(
            owner(&at("lnd-rdma/src/lnd/mod.rs")),
            None,
            "not counted apart"
        );
        assert_eq!(owner("/rustc/abc/library/core/src/num/mod.rs"), None);
        assert_eq!(
            owner("/root/.cargo/registry/src/x/some-crate/transport/src/lib.rs"),
            None,
            "a dependency's transport/src is not ours"
        );
        assert_eq!(owner("???"), None);
    }

    #[test]
    fn owners_go_by_where_a_function_is_defined_not_its_arguments() {
        let owner = |f| owner_by_name(f).map(|i| OWNERS[i]);
        assert_eq!(
            owner("lanet::node::queues::<impl lanet::node::Node>::pump_busy"),
            Some("core")
        );
        assert_eq!(
            owner("<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll"),
            Some("lnd")
        );
        assert_eq!(
            owner("<lanet_lnd_tcp::TcpLnd as lanet::lnd::Lnd>::poll"),
            Some("lnd")
        );
        assert_eq!(owner("lanet_lnd_tcp::uring::Uring::flush"), Some("lnd"));
        assert_eq!(owner("alloc::vec::Vec<lanet::mem::X>::push"), None);
        assert_eq!(
            owner("hashbrown::map::HashMap<lanet::nid::Nid,V>::get_mut"),
            None
        );
        assert_eq!(
            owner("<alloc::vec::Vec<T> as lanet::Foo>::bar"),
            None,
            "a library type's impl of our trait is the library's code"
        );
        assert_eq!(
            owner("lanet::endpoint::Endpoint::put<lanet_bench::latency::X>"),
            Some("core")
        );
        assert_eq!(
            owner("<impl lanet::lnd::Lnd for lanet::mem::MemLnd>::poll"),
            Some("lnd"),
            "the type the impl is for"
        );
        assert_eq!(owner("<impl lanet::node::Node>::pump"), Some("core"));
        assert_eq!(
            owner("<lanet::time::MonotonicClock as lanet::time::Clock>::now"),
            None,
            "a clock read is its caller's"
        );
        assert_eq!(owner("lanet::sys::monotonic_nanos"), None);
        assert_eq!(
            owner("lanet::sys::EventFd::new"),
            None,
            "a system call's wrapper is its caller's, as a clock read is"
        );
        assert_eq!(
            owner("lanet_bench::latency::pingpong::{{closure}}"),
            Some("bench")
        );
    }

    #[test]
    fn generic_arguments_are_left_out() {
        assert_eq!(
            shorten("<lanet::a::B<T> as c::D>::e"),
            "<..>::e".to_string()
        );
        assert_eq!(shorten("f<u8>::g"), "f<..>::g");
    }
}
