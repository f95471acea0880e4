use machvm_core::*;
use machvm_pagers::*;
use std::time::Duration;

const P: u64 = PAGE_SIZE;

#[test]
fn anonymous_memory_reads_back() {
    let k = Kernel::new(KernelConfig::default());
    let t = k.task_create(None).unwrap();
    let a = k.vm_allocate(t, VmAddr(0), 4 * P, true).unwrap();
    assert_eq!(k.read_u64(t, a).unwrap(), 0);
    k.write_u64(t, VmAddr(a.0 + P + 8), 42).unwrap();
    assert_eq!(k.read_u64(t, VmAddr(a.0 + P + 8)).unwrap(), 42);
    k.vm_protect(t, a, 4 * P, false, VmProt::READ).unwrap();
    assert_eq!(k.write_u64(t, a, 1), Err(KernError::ProtectionFailure));
    let child = k.task_create(Some(t)).unwrap();
    assert_eq!(k.read_u64(child, VmAddr(a.0 + P + 8)).unwrap(), 42);
}

#[test]
fn scripted_pager_supplies_and_proxy_restricts() {
    let k = Kernel::new(KernelConfig::default());
    let client = k.task_create(None).unwrap();
    let mut pager = PagerConn::new(k.clone()).unwrap();
    let obj = pager.new_object().unwrap();
    let name = pager.give(obj, client).unwrap();
    let addr = k.vm_map(client, MapRequest::anywhere(2 * P, Some(name))).unwrap();
    let k2 = k.clone();
    let reader = std::thread::spawn(move || k2.read_u64(client, addr));
    let (o, off, len, _) = pager.expect_request(Duration::from_secs(5)).unwrap();
    assert_eq!((o, off), (obj, 0));
    assert!(len >= P);
    let mut data = vec![0u8; len as usize];
    data[..8].copy_from_slice(&7u64.to_le_bytes());
    pager.supply(obj, 0, &data).unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), 7);

    for v in [ProxyVersion::Mapping, ProxyVersion::Paging] {
        let px = k.memory_object_create_proxy_version(client, VmProt::READ, &[name], &[0], &[0], &[P], v).unwrap();
        let a = k.vm_map(client, MapRequest::anywhere(P, Some(px.proxy))).unwrap();
        assert_eq!(k.read_u64(client, a).unwrap(), 7);
        assert_eq!(k.write_u64(client, a, 1), Err(KernError::ProtectionFailure));
        assert_eq!(k.vm_map(client, MapRequest::anywhere(2 * P, Some(px.proxy))), Err(KernError::InvalidArgument));
        let esc = k.memory_object_create_proxy_version(client, VmProt::ALL, &[px.proxy], &[0], &[0], &[P], v).unwrap();
        let b = k.vm_map(client, MapRequest::anywhere(P, Some(esc.proxy))).unwrap();
        assert_eq!(k.write_u64(client, b, 1), Err(KernError::ProtectionFailure));
        if v == ProxyVersion::Paging {
            k.memory_object_proxy_revoke(client, px.revoke).unwrap();
            assert_eq!(k.read_u64(client, a), Err(KernError::MemoryError));
            assert_eq!(k.read_u64(client, b), Err(KernError::MemoryError));
        }
    }
    assert_eq!(k.stats().sent("data_request"), 1);
}
