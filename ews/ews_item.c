/* stub */ typedef int followupd_stub_ews_item_t;
