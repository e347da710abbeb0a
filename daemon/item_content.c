/* stub */ typedef int followupd_stub_item_content_t;
