use super::*;
use hash::{SaltPosition, Simple};

fn chain(id: UserIdType) -> (Authn, Users) {
    let (t, _rx) = ReplTables::open("a@h", None, &[USERS_TABLE]).expect("open");
    let users = Users::new(Arc::new(t)).expect("users");
    let a = Authn {
        chain: vec![Authenticator::BuiltInDb {
            user_id_type: id,
            algo: HashAlgo::default(),
            users: users.clone(),
        }],
    };
    (a, users)
}

/// A verdict as superuser-or-refusal, to compare.
fn sum(v: Verdict) -> Result<bool, Refusal> {
    match v {
        Verdict::Allow(i) => Ok(i.superuser),
        Verdict::Deny(r) => Err(r),
    }
}

fn creds(client: &str, user: Option<&str>, pw: Option<&str>) -> Credentials {
    Credentials {
        client_id: client.into(),
        username: user.map(String::from),
        password: pw.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        peer: IpAddr::from([127, 0, 0, 1]),
    }
}

#[tokio::test]
async fn the_chain_allows_denies_and_refuses_what_nobody_claims() {
    let (a, users) = chain(UserIdType::Username);
    users
        .add("alice", b"pw1", false, HashAlgo::default())
        .expect("add");
    users
        .add("root", b"pw2", true, HashAlgo::Bcrypt { salt_rounds: 4 })
        .expect("add");
    let on = ListenerAuthn::Enabled;
    assert_eq!(
        sum(a
            .authenticate(&creds("c", Some("alice"), Some("pw1")), on)
            .await),
        Ok(false)
    );
    assert_eq!(
        sum(a
            .authenticate(&creds("c", Some("root"), Some("pw2")), on)
            .await),
        Ok(true)
    );
    assert_eq!(
        sum(a
            .authenticate(&creds("c", Some("alice"), Some("nope")), on)
            .await),
        Err(Refusal::BadUsernameOrPassword)
    );
    // Unknown user, no password, anonymous: ignored by the database, so
    // refused at the end of the chain.
    for c in [
        creds("c", Some("bob"), Some("pw1")),
        creds("c", Some("alice"), None),
        creds("c", None, None),
    ] {
        assert_eq!(
            sum(a.authenticate(&c, on).await),
            Err(Refusal::NotAuthorized)
        );
    }
    // The listener may switch authentication off, or refuse anonymous
    // clients before the chain runs (even with an empty chain).
    assert_eq!(
        sum(a
            .authenticate(&creds("c", None, None), ListenerAuthn::Disabled)
            .await),
        Ok(false)
    );
    let empty = Authn::default();
    assert_eq!(
        sum(empty.authenticate(&creds("c", None, None), on).await),
        Ok(false)
    );
    assert_eq!(
        sum(empty
            .authenticate(
                &creds("c", Some(""), Some("x")),
                ListenerAuthn::QuickDenyAnonymous
            )
            .await),
        Err(Refusal::NotAuthorized)
    );
    // Changes take effect at once.
    users
        .update("alice", Some(b"new"), Some(true), HashAlgo::default())
        .expect("update");
    assert_eq!(
        sum(a
            .authenticate(&creds("c", Some("alice"), Some("new")), on)
            .await),
        Ok(true)
    );
    users.delete("alice").expect("delete");
    assert_eq!(
        sum(a
            .authenticate(&creds("c", Some("alice"), Some("new")), on)
            .await),
        Err(Refusal::NotAuthorized)
    );
    assert!(matches!(
        users.add("root", b"x", false, HashAlgo::default()),
        Err(UserError::Exists(_))
    ));
    assert!(matches!(users.delete("ghost"), Err(UserError::NotFound(_))));
}

#[tokio::test]
async fn clientid_users_and_a_user_kept_with_its_own_algorithm() {
    let (a, users) = chain(UserIdType::ClientId);
    let md5 = HashAlgo::Simple {
        name: Simple::Md5,
        salt: SaltPosition::Suffix,
    };
    users.add("dev-1", b"k", false, md5).expect("add");
    assert_eq!(
        sum(a
            .authenticate(&creds("dev-1", None, Some("k")), ListenerAuthn::Enabled)
            .await),
        Ok(false)
    );
    assert_eq!(users.get("dev-1").map(|u| u.algo), Some(md5));
}
