/* stub */ typedef int followupd_stub_http_client_t;
