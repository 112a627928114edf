#include <p11-kit/pkcs11.h>
__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR p) { (void)p; return CKR_GENERAL_ERROR; }
