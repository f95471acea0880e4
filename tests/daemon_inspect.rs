//! Inspecting a live `machvmd`: `ps`, `vmmap`, `objects` and `proxies`, through
//! the wire and through the `machvm` commands (their tables and their
//! `--json`). The daemon, the pager and the commands are processes; the
//! clients are connections of the test process. Every process is killed
//! when its guard drops, and every wait has a deadline.

mod common;
use common::daemon::{client, daemon, machvm, pager, wait_until, Dir, Proc};
use machvm_client::{map_anywhere, ClientError, Connection};
use machvm_protocol::wire::{EntryRow, InspectWhat, ObjectKind, ObjectRow, ProxyRow, ProxyVersion, Reply, TaskRow};
use machvm_protocol::{KernError, VmAddr, VmProt, PAGE_SIZE};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const P: u64 = PAGE_SIZE;

fn vmmap(c: &Connection, task: u32) -> Vec<EntryRow> {
    match c.inspect(InspectWhat::VmMap { task }).unwrap() {
        Reply::VmMap(rows) => rows,
        other => panic!("{other:?}"),
    }
}

fn objects(c: &Connection) -> Vec<ObjectRow> {
    match c.inspect(InspectWhat::Objects).unwrap() {
        Reply::Objects(rows) => rows,
        other => panic!("{other:?}"),
    }
}

fn proxies(c: &Connection) -> Vec<ProxyRow> {
    match c.inspect(InspectWhat::Proxies).unwrap() {
        Reply::Proxies(rows) => rows,
        other => panic!("{other:?}"),
    }
}

fn tasks(c: &Connection) -> Vec<TaskRow> {
    match c.inspect(InspectWhat::Tasks).unwrap() {
        Reply::Tasks(rows) => rows,
        other => panic!("{other:?}"),
    }
}

fn count(v: &[(String, u64)], kind: &str) -> u64 {
    v.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n)
}

/// Runs `machvm --socket SOCKET ARGS...` to completion (10 s at most) and
/// returns what it printed; it must succeed.
fn run_cli(socket: &Path, args: &[&str]) -> String {
    let mut child = Command::new(machvm())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting machvm");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    let mut p = Proc(child);
    let status = p.wait_exit(Duration::from_secs(10)).expect("machvm finished");
    let (out, err) = (out.join().unwrap().unwrap(), err.join().unwrap().unwrap());
    assert!(status.success(), "machvm {args:?}: {status:?}\n{out}\n{err}");
    out
}

fn json(socket: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_cli(socket, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("machvm {args:?} --json: {e}\n{out}"))
}

/// The table's lines, the header first. Each of `columns` must line up
/// in every line: a left-aligned field starts where its header does; one
/// named `>NAME` is right-aligned and ends where its header does. A line
/// blank up to a column (a proxy's second window) has nothing in it.
fn check_aligned(table: &str, columns: &[&str]) -> Vec<String> {
    let lines: Vec<String> = table.lines().map(str::to_string).collect();
    let header = &lines[0];
    for col in columns {
        let (name, right) = col.strip_prefix('>').map_or((*col, false), |c| (c, true));
        let at = header.find(name).unwrap_or_else(|| panic!("no column {name} in {header:?}"));
        for line in &lines[1..] {
            let before = line.get(..at).unwrap_or_else(|| panic!("{line:?} is shorter than the header"));
            if line.get(..at + name.len()).is_some_and(|upto| upto.trim().is_empty()) {
                continue;
            }
            let ok = if right {
                let end = at + name.len();
                let b = line.as_bytes();
                b[end - 1] != b' ' && b.get(end).is_none_or(|&c| c == b' ')
            } else {
                (at == 0 || before.ends_with(' ')) && !line[at..].starts_with(' ')
            };
            assert!(ok, "column {name} is not aligned:\n{header}\n{line}");
        }
    }
    lines
}

#[test]
fn vmmap_shows_a_clients_entries_with_their_ranges_protections_and_proxy() {
    let dir = Dir::new("inspect-vmmap");
    let _d = daemon(&dir.socket(), &[]);
    let _p = pager(&dir.socket(), &["zero", "--name", "data"], "data");
    let c = client(&dir.socket(), "mapper");
    let obj = c.name_lookup("data").unwrap();
    let a = c.vm_map(map_anywhere(4 * P, Some(obj))).unwrap();
    let z = c.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    c.vm_protect(z, P, false, VmProt::READ).unwrap();
    let (proxy, _revoke) =
        c.proxy_create(VmProt::READ, &[obj], &[0], &[0], &[4 * P], Some(ProxyVersion::Paging)).unwrap();
    let pa = c.vm_map(map_anywhere(2 * P, Some(proxy))).unwrap();
    assert_eq!(c.load(pa, 4).unwrap(), vec![0; 4]);

    let rows = vmmap(&c, c.task());
    assert_eq!(rows.len(), 4, "{rows:?}");
    let at = |addr: VmAddr| rows.iter().find(|r| r.start == addr).unwrap_or_else(|| panic!("{addr:?}: {rows:?}"));
    let direct = at(a);
    assert_eq!((direct.end, direct.cur, direct.max), (VmAddr(a.0 + 4 * P), VmProt::DEFAULT, VmProt::ALL));
    assert!(direct.object.is_some() && direct.shared && direct.via.is_empty(), "{direct:?}");
    let (ro, rw) = (at(z), at(VmAddr(z.0 + P)));
    assert_eq!((ro.end, ro.cur, rw.end, rw.cur), (VmAddr(z.0 + P), VmProt::READ, VmAddr(z.0 + 2 * P), VmProt::DEFAULT));
    assert!(ro.object.is_none() && !ro.shared, "zero-fill memory not touched has no object yet: {ro:?}");
    // The proxy mapping is read-only, whatever was asked, and records
    // the proxy it reaches the memory through.
    let through = at(pa);
    assert_eq!((through.end, through.cur, through.max), (VmAddr(pa.0 + 2 * P), VmProt::READ, VmProt::READ));
    assert_eq!(through.via.len(), 1, "{through:?}");
    let listed = proxies(&c);
    let px = listed.iter().find(|p| p.proxy == through.via[0]).expect("the proxy is listed");
    assert_eq!(through.object, px.view, "a paging proxy's mapping maps its view");
    assert_eq!(px.targets, vec![direct.object.unwrap()]);

    // Another connection may look; a task that is not connected is none.
    let other = client(&dir.socket(), "looker");
    assert_eq!(vmmap(&other, c.task()), rows);
    match other.inspect(InspectWhat::VmMap { task: 9999 }) {
        Err(ClientError::Kern(e)) => assert_eq!(e, KernError::InvalidTask),
        r => panic!("{r:?}"),
    }

    // The command: one aligned line per entry, and the same in JSON.
    let task = c.task().to_string();
    let table = run_cli(&dir.socket(), &["vmmap", &task]);
    let lines =
        check_aligned(&table, &["START", "END", ">SIZE", "CUR/MAX", "INHERIT", ">OBJECT", ">OFFSET", "FLAGS", "VIA"]);
    assert_eq!(lines.len(), 5, "{table}");
    let line = |addr: VmAddr| {
        let start = format!("{:#014x}", addr.0);
        lines.iter().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no {start} in\n{table}")).clone()
    };
    assert!(line(a).contains(" rw-/rwx ") && line(a).contains(" shared "), "{table}");
    assert!(line(z).contains(" r--/rwx "), "{table}");
    let l = line(pa);
    assert!(l.contains(" r--/r-- ") && l.ends_with(&format!(" {}", through.via[0])), "{table}");
    let v = json(&dir.socket(), &["vmmap", &task, "--json"]);
    assert_eq!(v.len(), 4);
    let e = v.iter().find(|e| e["start"] == pa.0).expect("the proxy mapping");
    assert_eq!((e["end"].as_u64(), e["size"].as_u64()), (Some(pa.0 + 2 * P), Some(2 * P)));
    assert_eq!((e["cur"].as_str(), e["max"].as_str(), e["inherit"].as_str()), (Some("r--"), Some("r--"), Some("copy")));
    assert_eq!(e["via"], serde_json::json!([through.via[0]]));
    assert_eq!(e["object"].as_u64(), through.object);
}

#[test]
fn objects_show_resident_pages_who_pages_them_and_their_messages() {
    let dir = Dir::new("inspect-objects");
    let _d = daemon(&dir.socket(), &[]);
    let mut p = pager(&dir.socket(), &["zero", "--name", "data"], "data");
    let c = client(&dir.socket(), "toucher");
    let obj = c.name_lookup("data").unwrap();
    let a = c.vm_map(map_anywhere(4 * P, Some(obj))).unwrap();
    for i in 0..3 {
        c.store(VmAddr(a.0 + i * P), b"resident").unwrap();
    }
    let z = c.vm_allocate(VmAddr(0), 2 * P, true).unwrap();
    c.store(z, b"anonymous").unwrap();
    let entries = vmmap(&c, c.task());
    let id = entries.iter().find(|e| e.start == a).unwrap().object.unwrap();
    let anon = entries.iter().find(|e| e.start == z).unwrap().object.expect("touched: it has an object");
    let pager_task = tasks(&c).into_iter().find(|t| t.name.contains("pager zero")).expect("the pager's task").task;

    let rows = objects(&c);
    let ext = rows.iter().find(|o| o.object == id).expect("the pager's object");
    assert_eq!(ext.kind, ObjectKind::External);
    // Faults ask for clusters: at least the pages stored to are resident.
    assert!(ext.resident >= 3, "{ext:?}");
    assert_eq!(ext.pager_task, Some(pager_task));
    assert_eq!(ext.pager.as_deref(), Some(format!("task {pager_task} (pager zero data)").as_str()));
    let state = ext.pager_state.clone().expect("a pager's object");
    assert!(state.ready && !state.dead && !state.default_pager && state.may_cache, "{state:?}");
    assert_eq!(count(&ext.sent, "init"), 1);
    assert!(count(&ext.sent, "data_request") >= 1, "{ext:?}");
    assert_eq!(count(&ext.received, "ready") + count(&ext.received, "change_attributes"), 1, "{ext:?}");
    // One answer per run of pages: at least one per request.
    let answers = count(&ext.received, "data_unavailable") + count(&ext.received, "data_supply");
    assert!(answers >= count(&ext.sent, "data_request"), "{ext:?}");
    let tmp = rows.iter().find(|o| o.object == anon).unwrap();
    assert_eq!((tmp.kind, tmp.resident, tmp.size, tmp.pager.as_deref()), (ObjectKind::Temporary, 1, 2 * P, None));
    assert!(tmp.pager_state.is_none() && tmp.sent.is_empty() && tmp.received.is_empty());

    // The command's table and JSON say the same.
    let table = run_cli(&dir.socket(), &["objects"]);
    let lines =
        check_aligned(&table, &[">OBJECT", "KIND", ">SIZE", ">RESIDENT", ">REFS", "PAGER", "STATE", "MESSAGES"]);
    let line = lines.iter().find(|l| l.trim_start().starts_with(&format!("{id} "))).expect("the object's line");
    assert!(line.contains(" external ") && line.contains("(pager zero data)"), "{table}");
    assert!(line.contains("init=1") && line.contains(" ready,delay,may_cache "), "{table}");
    let v = json(&dir.socket(), &["objects", "--json"]);
    let o = v.iter().find(|o| o["object"] == id).expect("the object in JSON");
    assert_eq!((o["kind"].as_str(), o["pager_task"].as_u64()), (Some("external"), Some(pager_task as u64)));
    assert!(o["resident"].as_u64().unwrap() >= 3 && o["sent"]["init"] == 1, "{o}");
    assert_eq!(o["pager_state"]["ready"], true);
    let t = v.iter().find(|o| o["object"] == anon).unwrap();
    assert_eq!((t["kind"].as_str(), t["resident"].as_u64()), (Some("temporary"), Some(1)));
    assert!(t["pager"].is_null(), "{t}");

    // Killed, the pager is dead for the kernel and no task serves it.
    p.kill();
    wait_until("the pager to be dead", || {
        objects(&c).iter().any(|o| o.object == id && o.pager_state.as_ref().is_some_and(|s| s.dead))
    });
    let ext = objects(&c).into_iter().find(|o| o.object == id).unwrap();
    assert_eq!((ext.pager, ext.pager_task), (None, None));
    assert!(run_cli(&dir.socket(), &["objects"])
        .lines()
        .any(|l| l.trim_start().starts_with(&format!("{id} ")) && l.contains(" dead,")));
}

#[test]
fn proxies_show_their_windows_and_their_revocation() {
    let dir = Dir::new("inspect-proxies");
    let _d = daemon(&dir.socket(), &[]);
    let _p = pager(&dir.socket(), &["zero", "--name", "data"], "data");
    let c = client(&dir.socket(), "owner");
    let obj = c.name_lookup("data").unwrap();
    let max = VmProt::READ | VmProt::WRITE;
    let (proxy, revoke) =
        c.proxy_create(max, &[obj, obj], &[0, 4 * P], &[0, 8 * P], &[2 * P, P], Some(ProxyVersion::Paging)).unwrap();
    let (_mapping, _) = c.proxy_create(VmProt::READ, &[obj], &[0], &[0], &[P], Some(ProxyVersion::Mapping)).unwrap();
    let a = c.vm_map(map_anywhere(5 * P, Some(proxy))).unwrap_err();
    assert!(matches!(a, ClientError::Kern(_)), "the proxy has a gap at 2P..4P: {a:?}");
    let a = c.vm_map(map_anywhere(2 * P, Some(proxy))).unwrap();
    c.store(a, b"through").unwrap();
    let id = vmmap(&c, c.task()).into_iter().find(|e| e.start == a).unwrap().via[0];

    let rows = proxies(&c);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let px = rows.iter().find(|p| p.proxy == id).unwrap();
    assert_eq!((px.version, px.protection, px.revoked, px.port_dead), (ProxyVersion::Paging, max, false, false));
    let w: Vec<(u64, u64, u64, VmProt)> = px.windows.iter().map(|w| (w.offset, w.len, w.start, w.prot)).collect();
    assert_eq!(w, [(0, 2 * P, 0, max), (4 * P, P, 8 * P, max)]);
    assert!(px.view.is_some() && px.targets.len() == 2 && px.targets[0] == px.targets[1], "{px:?}");
    let mp = rows.iter().find(|p| p.proxy != id).unwrap();
    assert_eq!((mp.version, mp.protection, mp.view), (ProxyVersion::Mapping, VmProt::READ, None));
    // Each agrees with what the proxy's holder is told.
    let info = c.proxy_info(proxy).unwrap();
    assert_eq!((info.windows, info.protection, info.revoked), (px.windows.clone(), px.protection, px.revoked));

    let table = run_cli(&dir.socket(), &["proxies"]);
    let columns =
        [">PROXY", "VERSION", "PROT", "REVOKED", "PORT", ">VIEW", ">OFFSET", ">LEN", "TARGET", ">START", "ALLOWS"];
    let lines = check_aligned(&table, &columns);
    // A header, two windows of the paging proxy, one of the other.
    assert_eq!(lines.len(), 4, "{table}");
    let first = lines.iter().position(|l| l.trim_start().starts_with(&format!("{id} "))).expect("the proxy's line");
    assert!(lines[first].contains(" paging ") && lines[first].contains(" rw- ") && lines[first].contains(" no "));
    assert!(lines[first + 1].trim_start().starts_with("0x4000 "), "its second window on the next line:\n{table}");

    c.proxy_revoke(revoke).unwrap();
    match c.load(a, 4) {
        Err(ClientError::Kern(e)) => assert_eq!(e, KernError::MemoryError),
        r => panic!("{r:?}"),
    }
    let px = proxies(&c).into_iter().find(|p| p.proxy == id).expect("still listed: a mapping holds it");
    assert!(px.revoked, "{px:?}");
    let v = json(&dir.socket(), &["proxies", "--json"]);
    let p = v.iter().find(|p| p["proxy"] == id).unwrap();
    assert_eq!(
        (p["revoked"].as_bool(), p["version"].as_str(), p["protection"].as_str()),
        (Some(true), Some("paging"), Some("rw-"))
    );
    assert_eq!(p["windows"].as_array().map(Vec::len), Some(2));
    assert_eq!(p["windows"][1]["offset"].as_u64(), Some(4 * P));
    let m = v.iter().find(|p| p["proxy"] != id).unwrap();
    assert_eq!((m["revoked"].as_bool(), m["version"].as_str()), (Some(false), Some("mapping")));
    let table = run_cli(&dir.socket(), &["proxies"]);
    let line = table.lines().find(|l| l.trim_start().starts_with(&format!("{id} "))).unwrap();
    assert!(line.contains(" yes "), "{table}");
}

/// `machvm ps` shows, beside each task's resident pages, the pages charged
/// to it (those its faults brought in) and its limit (`--max-resident`).
#[test]
fn ps_shows_the_pages_charged_to_each_task_and_its_limit() {
    let dir = Dir::new("inspect-ps");
    let _d = daemon(&dir.socket(), &["--max-resident", "16"]);
    let c = client(&dir.socket(), "charged");
    let a = c.vm_allocate(VmAddr(0), 4 * P, true).unwrap();
    for i in 0..3 {
        c.store(VmAddr(a.0 + i * P), b"x").unwrap();
    }
    let me = tasks(&c).into_iter().find(|t| t.name == "charged").unwrap().task;
    match c.inspect(InspectWhat::Charges).unwrap() {
        Reply::Charges(rows) => {
            let row = rows.iter().find(|r| r.task == me).expect("a row for every task");
            assert_eq!((row.charged, row.limit), (3, Some(16)));
        }
        other => panic!("{other:?}"),
    }
    let v = json(&dir.socket(), &["ps", "--json"]);
    let row = v.iter().find(|r| r["name"] == "charged").unwrap();
    assert_eq!(
        (row["resident"].as_u64(), row["charged"].as_u64(), row["resident_limit"].as_u64()),
        (Some(3), Some(3), Some(16))
    );
    let table = run_cli(&dir.socket(), &["ps"]);
    let lines = check_aligned(&table, &[">TASK", ">RESIDENT", ">CHARGED", ">LIMIT", "NAME"]);
    let line = lines.iter().find(|l| l.ends_with("  charged")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[4..7], ["3", "3", "16"], "{line}");
}
