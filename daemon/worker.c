/* stub */ typedef int followupd_stub_worker_t;
