/* stub */ typedef int followupd_stub_ews_request_t;
