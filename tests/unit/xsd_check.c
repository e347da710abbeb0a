/* xsd_check — schema validation of built requests for the cmocka tests.
 *
 * Microsoft's types.xsd has one content model libxml2 refuses ("not determinist",
 * ArrayOfTransitionsType); the schema README explains why deleting the three
 * redundant substitution-group references in a temporary copy is harmless. The
 * files in the schema directory itself are never touched. */
#include "xsd_check.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlschemas.h>

#include "daemon/text.h"

#define SCHEMA_ENV "FOLLOWUPD_EWS_SCHEMA"
#define ENTRY_SCHEMA "ews-envelope.xsd"
#define PATCHED_SCHEMA "types.xsd"

static char temp_dir[64];
static xmlSchemaPtr schema;

/* The first error libxml2 reports through a structured handler. */
typedef struct first_error {
    char text[512];
    bool set;
} first_error;

static void keep_first_error(void *data, xmlErrorPtr error)
{
    first_error *first = data;

    if (first->set || error == NULL || error->level < XML_ERR_ERROR)
        return;
    first->set = true;
    snprintf(first->text, sizeof first->text, "line %d: %s", error->line,
             error->message != NULL ? error->message : "unknown error");
    size_t n = strlen(first->text);
    while (n > 0 && first->text[n - 1] == '\n')
        first->text[--n] = '\0';
}

/* The parser hands its structured handler ctxt->userData, which SAX2 needs to be the
 * context itself, so the state rides in ctxt->_private. */
static void keep_first_parse_error(void *ctx, xmlErrorPtr error)
{
    xmlParserCtxtPtr ctxt = ctx;

    if (ctxt != NULL && ctxt->_private != NULL)
        keep_first_error(ctxt->_private, error);
}

/* The lines the README says to delete, matched as the README's sed does. */
static bool is_dropped_line(const char *line)
{
    static const char *const refs[] = {
        "<xs:element ref=\"t:AbsoluteDateTransition\"",
        "<xs:element ref=\"t:RecurringDayTransition\"",
        "<xs:element ref=\"t:RecurringDateTransition\"",
    };
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
        if (strstr(line, refs[i]) != NULL)
            return true;
    return false;
}

/* Copies from/name to temp_dir/name; in types.xsd, minus the dropped lines.
 * Returns the number of dropped lines, or -1. */
static int copy_schema_file(const char *from_dir, const char *name)
{
    char from[4096], to[4096];
    FILE *in = NULL, *out = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int dropped = 0;
    bool patch = strcmp(name, PATCHED_SCHEMA) == 0;

    snprintf(from, sizeof from, "%s/%s", from_dir, name);
    snprintf(to, sizeof to, "%s/%s", temp_dir, name);
    in = fopen(from, "r");
    if (in == NULL) {
        fprintf(stderr, "# xsd_check: cannot read %s: %s\n", from, strerror(errno));
        goto fail;
    }
    out = fopen(to, "w");
    if (out == NULL) {
        fprintf(stderr, "# xsd_check: cannot write %s: %s\n", to, strerror(errno));
        goto fail;
    }
    while ((n = getline(&line, &cap, in)) > 0) {
        if (patch && is_dropped_line(line)) {
            dropped++;
            continue;
        }
        if (fwrite(line, 1, (size_t)n, out) != (size_t)n)
            goto fail;
    }
    if (ferror(in))
        goto fail;
    free(line);
    fclose(in);
    if (fclose(out) != 0)
        return -1;
    return dropped;

fail:
    free(line);
    if (in != NULL)
        fclose(in);
    if (out != NULL)
        fclose(out);
    return -1;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Copies every *.xsd; fails unless the entry schema came along and exactly three
 * lines were dropped from types.xsd (otherwise the schema is not the one the README
 * describes, and a silent mismatch would make validation meaningless). */
static int copy_schema_dir(const char *from_dir)
{
    DIR *dir = opendir(from_dir);
    struct dirent *entry;
    bool have_entry = false;
    int dropped = -1;

    if (dir == NULL) {
        fprintf(stderr, "# xsd_check: cannot open %s: %s\n", from_dir, strerror(errno));
        return -1;
    }
    while ((entry = readdir(dir)) != NULL) {
        if (!has_suffix(entry->d_name, ".xsd"))
            continue;
        int n = copy_schema_file(from_dir, entry->d_name);
        if (n < 0) {
            closedir(dir);
            return -1;
        }
        if (strcmp(entry->d_name, PATCHED_SCHEMA) == 0)
            dropped = n;
        if (strcmp(entry->d_name, ENTRY_SCHEMA) == 0)
            have_entry = true;
    }
    closedir(dir);
    if (!have_entry || dropped != 3) {
        fprintf(stderr, "# xsd_check: %s lacks %s or %s has %d of the 3 lines to drop\n",
                from_dir, ENTRY_SCHEMA, PATCHED_SCHEMA, dropped);
        return -1;
    }
    return 0;
}

static void remove_temp_dir(void)
{
    DIR *dir;
    struct dirent *entry;
    char path[4096];

    if (temp_dir[0] == '\0')
        return;
    dir = opendir(temp_dir);
    if (dir != NULL) {
        while ((entry = readdir(dir)) != NULL) {
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", temp_dir, entry->d_name);
            unlink(path);
        }
        closedir(dir);
    }
    rmdir(temp_dir);
    temp_dir[0] = '\0';
}

int xsd_check_init(void)
{
    const char *dir = getenv(SCHEMA_ENV);
    char entry_path[4096];
    xmlSchemaParserCtxtPtr parser = NULL;
    first_error first = { .set = false };

    if (schema != NULL)
        return 0;
    if (dir == NULL || dir[0] == '\0' || access(dir, R_OK | X_OK) != 0) {
        printf("# EWS schema not found: skipping XSD validation (set " SCHEMA_ENV ")\n");
        return 0;
    }

    const char *tmp = getenv("TMPDIR");
    snprintf(temp_dir, sizeof temp_dir, "%s/ews-xsd-XXXXXX",
             tmp != NULL && tmp[0] != '\0' && strlen(tmp) < 40 ? tmp : "/tmp");
    if (mkdtemp(temp_dir) == NULL) {
        fprintf(stderr, "# xsd_check: mkdtemp %s: %s\n", temp_dir, strerror(errno));
        temp_dir[0] = '\0';
        return -1;
    }
    if (copy_schema_dir(dir) != 0)
        goto fail;

    snprintf(entry_path, sizeof entry_path, "%s/%s", temp_dir, ENTRY_SCHEMA);
    parser = xmlSchemaNewParserCtxt(entry_path);
    if (parser == NULL)
        goto fail;
    xmlSchemaSetParserStructuredErrors(parser, keep_first_error, &first);
    schema = xmlSchemaParse(parser);
    xmlSchemaFreeParserCtxt(parser);
    if (schema == NULL) {
        fprintf(stderr, "# xsd_check: %s does not compile: %s\n", entry_path,
                first.set ? first.text : "unknown error");
        goto fail;
    }
    return 0;

fail:
    remove_temp_dir();
    return -1;
}

bool xsd_check_enabled(void)
{
    return schema != NULL;
}

int xsd_check_validate(const char *xml, size_t len, char *err, size_t errlen)
{
    first_error first = { .set = false };
    xmlParserCtxtPtr parser = NULL;
    xmlDocPtr doc = NULL;
    xmlSchemaValidCtxtPtr validator = NULL;
    int rc = -1;

    text_set_error(err, errlen, "%s", "");
    if (xml == NULL || len == 0 || len > (size_t)0x7fffffff) {
        text_set_error(err, errlen, "no document");
        return -1;
    }
    /* Well-formedness is checked even without the schema. */
    parser = xmlNewParserCtxt();
    if (parser == NULL) {
        text_set_error(err, errlen, "out of memory");
        return -1;
    }
    parser->sax->serror = keep_first_parse_error;
    parser->_private = &first;
    doc = xmlCtxtReadMemory(parser, xml, (int)len, "request.xml", NULL, XML_PARSE_NONET);
    if (doc == NULL || !parser->wellFormed) {
        text_set_error(err, errlen, "not well-formed: %s",
                       first.set ? first.text : "unknown error");
        goto done;
    }
    if (schema == NULL) {
        rc = 0;
        goto done;
    }

    validator = xmlSchemaNewValidCtxt(schema);
    if (validator == NULL) {
        text_set_error(err, errlen, "out of memory");
        goto done;
    }
    xmlSchemaSetValidStructuredErrors(validator, keep_first_error, &first);
    int result = xmlSchemaValidateDoc(validator, doc);
    if (result != 0) {
        text_set_error(err, errlen, "%s", first.set ? first.text : "invalid (no message)");
        goto done;
    }
    rc = 0;

done:
    xmlSchemaFreeValidCtxt(validator);
    xmlFreeDoc(doc);
    xmlFreeParserCtxt(parser);
    return rc;
}

void xsd_check_fini(void)
{
    if (schema != NULL) {
        xmlSchemaFree(schema);
        schema = NULL;
    }
    remove_temp_dir();
}

int xsd_check_group_setup(void **state)
{
    (void)state;
    xmlInitParser();
    return xsd_check_init();
}

int xsd_check_group_teardown(void **state)
{
    (void)state;
    xsd_check_fini();
    xmlCleanupParser();
    return 0;
}
