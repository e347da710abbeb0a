/* stub */ typedef int followupd_stub_db_t;
