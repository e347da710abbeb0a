/* stub */ typedef int followupd_stub_reconcile_t;
