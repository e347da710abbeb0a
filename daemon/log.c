/* stub */ typedef int followupd_stub_log_t;
