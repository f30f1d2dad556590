//! Tests of the store: atomic batches, reopen, group commit.

use super::*;

fn open(dir: &Path, durability: Durability) -> Store {
    Store::open(
        dir,
        Options {
            durability,
            ..Options::default()
        },
    )
    .expect("open store")
}

#[tokio::test]
async fn a_batch_across_keyspaces_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), Durability::Strict);
        let a = store.keyspace("a").unwrap();
        let b = store.keyspace("b").unwrap();
        let mut batch = store.batch();
        batch.put(&a, b"k1".to_vec(), b"v1".to_vec());
        batch.put(&b, b"k2".to_vec(), b"v2".to_vec());
        store.commit(batch).await.unwrap();
        let mut batch = store.batch();
        batch.delete(&a, b"k1".to_vec());
        store.commit(batch).await.unwrap();
    }
    let store = open(dir.path(), Durability::Strict);
    let a = store.keyspace("a").unwrap();
    let b = store.keyspace("b").unwrap();
    assert_eq!(a.get(b"k1").unwrap(), None);
    assert_eq!(b.get(b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
}

#[tokio::test]
async fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Strict);
    let ks = store.keyspace("q").unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let store = store.clone();
        let ks = ks.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u32 {
                let mut batch = store.batch();
                batch.put(
                    &ks,
                    [t.to_be_bytes(), i.to_be_bytes()].concat(),
                    vec![0u8; 64],
                );
                store.commit(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.batches, 800);
    assert!(
        stats.syncs < stats.batches,
        "group commit should merge fsyncs: {stats:?}"
    );
    assert_eq!(ks.range(&[0], &[0xff], usize::MAX).unwrap().len(), 800);
}

#[tokio::test]
async fn relaxed_writes_are_acknowledged_without_waiting_for_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Relaxed);
    let ks = store.keyspace("q").unwrap();
    let mut batch = store.batch();
    batch.put(&ks, b"k".to_vec(), b"v".to_vec());
    store.commit(batch).await.unwrap();
    // Acknowledged without an fsync: the background sync runs only once a second.
    assert_eq!(
        store.stats(),
        Stats {
            batches: 1,
            syncs: 0
        }
    );
    assert_eq!(ks.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn range_scans_respect_bounds_limit_and_direction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Relaxed);
    let ks = store.keyspace("r").unwrap();
    let mut batch = store.batch();
    for i in 0u8..10 {
        batch.put(&ks, vec![1, i], vec![i]);
    }
    batch.put(&ks, vec![2, 0], vec![99]);
    store.write(batch).unwrap();
    let fwd = ks.range(&[1], &[2], 3).unwrap();
    assert_eq!(fwd.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [0, 1, 2]);
    let rev = ks.range_rev(&[1], &[2], 2).unwrap();
    assert_eq!(rev.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [9, 8]);
    assert_eq!(ks.keys(&[1, 5], &[2], 100).unwrap().len(), 5);
}

#[test]
fn a_data_directory_in_use_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), Options::default()).unwrap();
    let e = Store::open(dir.path(), Options::default())
        .err()
        .expect("locked");
    let shown = e.to_string();
    assert!(shown.contains("is in use by another process"), "{shown}");
    assert!(shown.contains(&dir.path().display().to_string()), "{shown}");
}
