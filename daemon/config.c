/* stub */ typedef int followupd_stub_config_t;
