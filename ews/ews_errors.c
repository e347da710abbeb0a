/* stub */ typedef int followupd_stub_ews_errors_t;
