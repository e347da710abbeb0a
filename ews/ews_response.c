/* stub */ typedef int followupd_stub_ews_response_t;
