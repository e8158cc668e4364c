// The header must be usable from C++ as it is from C: compiled with -pedantic -Werror, linked
// and called through its extern "C" block.
#include <cstring>

#include "squeeze.h"

int main() {
    sqz_options *o = nullptr;
    if (sqz_options_new(&o) != SQZ_OK)
        return 1;
    const bool ok = sqz_options_set_fistpoints(o, 8u) == SQZ_ERR_UNSUPPORTED &&
                    std::strcmp(sqz_status_name(sqz_last_error_status()), "SQZ_ERR_UNSUPPORTED") == 0 &&
                    sqz_version_number() == SQZ_VERSION_NUMBER;
    sqz_options_free(o);
    return ok ? 0 : 1;
}
