#[test] fn placeholder_removed_by_helper() {}
