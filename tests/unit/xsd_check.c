/* stub */ typedef int xsd_stub_t;
